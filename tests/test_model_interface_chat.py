"""Chat templates: messages written in the corpus's own layout, checked against the vocabulary."""
import pytest

from model_interface.chat import ChatTemplate, ChatTemplateError, layout_of

MESSAGES = [{"role": "system", "content": "A street in Verona."}, {"role": "user", "content": " Good morrow! "},
            {"role": "assistant", "content": "And to you."}, {"role": "user", "name": "MERCUTIO", "content": "Hark"}]


def test_the_play_layout_writes_speeches_and_leaves_the_assistant_to_speak():
    text = ChatTemplate.layout("play").render(MESSAGES)
    assert text == ("Chorus:\nA street in Verona.\n\nROMEO:\nGood morrow!\n\nJULIET:\nAnd to you.\n\n"
                    "MERCUTIO:\nHark\n\nJULIET:\n")
    assert not ChatTemplate.layout("play").render(MESSAGES, add_generation_prompt=False).endswith("JULIET:\n")
    assert ChatTemplate.layout("play").stop == ("\n\n",)


def test_the_plain_layout_writes_the_texts():
    assert ChatTemplate.layout("plain").render(MESSAGES[:2]) == "A street in Verona.\n Good morrow! \n"
    assert ChatTemplate.layout("plain").stop == ()


def test_layout_is_read_from_the_corpus(shakespeare_path):
    assert layout_of(shakespeare_path.read_text(encoding="utf-8")[:100_000]) == "play"
    assert layout_of("int main(void) {\n  return 0;\n}\n" * 50) == "plain"
    assert layout_of("") == "plain"


def test_a_template_needing_characters_outside_the_vocabulary_is_refused():
    with pytest.raises(ChatTemplateError, match="outside the vocabulary: ':CEIJLMORTUhorsu'"):
        ChatTemplate.layout("play").check_vocabulary("abcdefg \n")
    ChatTemplate.layout("plain").check_vocabulary("ab\n")


@pytest.mark.parametrize("source", ["{% for m in messages %}{{ m.content }", "{{ ''.__class__.__mro__ }}",
                                    "{{ 1 // 0 }}", "{{ messages[0].content + 1 }}"])
def test_broken_or_unsafe_templates_fail_cleanly(source):
    with pytest.raises(ChatTemplateError, match="the chat template failed"):
        ChatTemplate(source).render(MESSAGES)
