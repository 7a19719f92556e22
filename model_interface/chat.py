"""Chat templates: how a list of chat messages becomes the text a character model continues.

A template is Jinja2, as Hugging Face's chat templates are (`messages`, `add_generation_prompt`), rendered in
Jinja's sandbox. It travels with the model version (ModelMetadata.chat_template, with the stop strings that
end a reply, `chat_stop`), written at export from the corpus's own layout; the gateway may replace it by a
setting. A character model knows no roles, so a template writes messages the way its corpus writes text:

- `play` (tiny-shakespeare and other plays): each message a speech, `NAME:\\ntext\\n\\n`, roles mapped to
  speaker names (a message's `name` wins), generation stopped at the blank line before the next speaker;
- `plain` (any other corpus): the messages' texts, one per line, and no stop.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from model_interface.errors import ModelInterfaceError

PLAY_TEMPLATE = """\
{#- Each message is a speech, as the corpus writes one: NAME, a colon, the lines, a blank line. -#}
{%- set speakers = {"system": "Chorus", "user": "ROMEO", "assistant": "JULIET"} -%}
{%- for message in messages -%}
{{ message.name or speakers.get(message.role, message.role) }}:
{{ message.content | trim }}

{% endfor -%}
{%- if add_generation_prompt -%}
{{ speakers.assistant }}:
{% endif -%}
"""
PLAY_STOP = ("\n\n",)  # a speech ends at a blank line; the next speaker is not the assistant's to write

PLAIN_TEMPLATE = """\
{%- for message in messages -%}
{{ message.content }}
{% endfor -%}
"""

LAYOUTS = {"play": (PLAY_TEMPLATE, PLAY_STOP), "plain": (PLAIN_TEMPLATE, ())}
SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z' ]{0,40}:$")  # "ROMEO:", "First Citizen:"
PLAY_MIN_SPEECHES = 0.05  # of non-empty lines; tiny-shakespeare has ~0.2, prose and code have ~0


class ChatTemplateError(ModelInterfaceError, ValueError):
    """A template that does not parse or render, or needs characters the vocabulary lacks."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # Jinja2
    stop: tuple[str, ...] = ()  # strings that end the assistant's reply (not included)

    @classmethod
    def layout(cls, name: str) -> "ChatTemplate":
        source, stop = LAYOUTS[name]
        return cls(source, stop)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        try:
            template = ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(self.source)
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as e:  # the template's own code
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None

    def check_vocabulary(self, vocab) -> None:
        """Every character the template itself writes (speaker names, colons, newlines) must be in the
        vocabulary, or no chat could be read: refused at export, not at request time."""
        probe = [{"role": role, "content": ""} for role in ("system", "user", "assistant")]
        written = set(self.render(probe, add_generation_prompt=True)) | set("".join(self.stop))
        missing = sorted(written - set(vocab))
        if missing:
            raise ChatTemplateError(f"the chat template writes characters outside the vocabulary: "
                                    f"{''.join(missing)!r}")


def layout_of(text: str) -> str:
    """"play" when the text is laid out as speeches (speaker lines after blank lines), else "plain"."""
    lines = text.splitlines()
    non_empty = sum(1 for line in lines if line.strip())
    speeches = sum(1 for before, line in zip([""] + lines, lines) if not before.strip() and SPEAKER_LINE.match(line))
    return "play" if non_empty and speeches / non_empty >= PLAY_MIN_SPEECHES else "plain"
