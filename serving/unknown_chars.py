"""Characters outside the model's vocabulary, in every route that takes text (completions, generate, score,
activations, tokenize).

The default is a 400 that names them (code `unknown_characters`): silently changing a user's text changes what
the model predicts. A request may ask otherwise with `unknown_chars` ("error", "drop" or "replace", with
`replacement_char`), and the server's default is CHARLM_UNKNOWN_CHARS / CHARLM_REPLACEMENT_CHAR. The replacement
must itself be in the vocabulary (checked against the version being served, which settings cannot know). A reply
of a changed text says what was changed in its `text_changes` field (schemas.TextChanges).

Whatever the action, Windows line ends are read as the model's newline: `\\r\\n` becomes `\\n` when the vocabulary
has no `\\r` (and counted in text_changes.crlf).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from serving.backend import ServedModel
from serving.errors import bad_request
from serving.schemas import TextChanges

SHOWN = 20  # characters named in a message


@dataclass(frozen=True)
class Policy:
    action: str  # error | drop | replace
    replacement: str
    replacement_from_request: bool


def policy(body, settings) -> Policy:
    """The request's `unknown_chars` and `replacement_char`, else the server's settings."""
    action = body.unknown_chars or settings.unknown_chars
    if body.replacement_char is not None and action != "replace":
        raise bad_request(f"replacement_char is only used with unknown_chars \"replace\" (here {action!r})",
                          "replacement_char")
    replacement = body.replacement_char if body.replacement_char is not None else settings.replacement_char
    return Policy(action, replacement, body.replacement_char is not None)


def shown(chars: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in chars[:SHOWN]) + (", ..." if len(chars) > SHOWN else "")


def prepare(model: ServedModel, texts: Sequence[str], params: Sequence[str],
            rule: Policy) -> tuple[list[str], TextChanges | None]:
    """The texts as the model will read them, and what was changed in them (None: nothing). `params` name each
    text in messages ("prompt", "prompt.1", "text")."""
    vocab = frozenset(model.metadata.vocab)
    if rule.replacement_from_request:
        check_replacement(rule, vocab)
    out, crlf, count, unknown_all = [], 0, 0, set()
    for text, param in zip(texts, params, strict=True):
        if "\r" not in vocab and "\r\n" in text:
            crlf += text.count("\r\n")
            text = text.replace("\r\n", "\n")
        unknown = sorted(set(text) - vocab)
        if unknown:
            if rule.action == "error":
                raise bad_request(f"{param} has characters outside the model's vocabulary: {shown(unknown)} "
                                  "(unknown_chars \"drop\" or \"replace\" would read the text without them)",
                                  param, code="unknown_characters")
            if rule.action == "replace":
                check_replacement(rule, vocab)
            unknown_all.update(unknown)
            count += sum(1 for c in text if c not in vocab)
            text = "".join(c if c in vocab else rule.replacement for c in text) if rule.action == "replace" \
                else "".join(c for c in text if c in vocab)
        out.append(text)
    if not crlf and not unknown_all:
        return out, None
    action = rule.action if unknown_all else None
    return out, TextChanges(action=action, chars=sorted(unknown_all), count=count,
                            replacement_char=rule.replacement if action == "replace" else None, crlf=crlf)


def check_replacement(rule: Policy, vocab: frozenset[str]) -> None:
    if rule.replacement not in vocab:
        where = "" if rule.replacement_from_request else " (the server's CHARLM_REPLACEMENT_CHAR; send replacement_char)"
        raise bad_request(f"replacement_char {rule.replacement!r}{where} is not in the model's vocabulary",
                          "replacement_char", code="unknown_characters")


def prepare_one(model: ServedModel, text: str, param: str, rule: Policy,
                nonempty: bool = False) -> tuple[str, TextChanges | None]:
    """One text; with `nonempty`, a text that dropping left empty is a 400 (score and activations read something)."""
    (text,), changes = prepare(model, [text], [param], rule)
    if nonempty and not text:
        raise bad_request(f"{param} has no characters left once those outside the vocabulary are dropped", param,
                          code="unknown_characters")
    return text, changes
