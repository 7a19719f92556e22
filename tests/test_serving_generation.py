"""Stop strings, server-sent events and the vocabulary check shared by the generating routes."""
import pytest

from model_interface.metadata import ModelMetadata
from model_interface.signatures import SIGNATURES
from serving.backend import ServedModel
from serving.errors import APIError
from serving.generation import StopScanner, check_vocabulary, sse


def feed_all(scanner, pieces):
    out, stopped = "", False
    for piece in pieces:
        text, stopped = scanner.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + scanner.flush(), False


@pytest.mark.parametrize("pieces, stops, expected", [
    (["hello world"], ["o w"], ("hell", True)),
    (list("hello world"), ["o w"], ("hell", True)),  # the stop string arrives across chunks
    (["hel", "lo w", "orld"], ["xyz", "lo"], ("hel", True)),  # the earliest of several
    (["abc", "def"], ["zz"], ("abcdef", False)),  # nothing held back at the end
    (["abc", "def"], [], ("abcdef", False)),
    (["ab", "c"], ["c"], ("ab", True)),
])
def test_stop_scanner(pieces, stops, expected):
    assert feed_all(StopScanner(stops), pieces) == expected


def test_stop_scanner_holds_back_less_than_a_stop_string():
    scanner = StopScanner(["bcd"])
    assert scanner.feed("xab") == ("x", False)  # "ab" could be the start of "bcd": held
    assert scanner.feed("e") == ("a", False)  # the last 2 characters are always held until decided
    assert scanner.flush() == "be"


def test_sse_framing():
    assert sse({"text": "é\n"}) == 'data: {"text":"é\\n"}\n\n'
    assert sse("[DONE]") == "data: [DONE]\n\n"


def test_vocabulary_check_names_the_characters():
    metadata = ModelMetadata(model_name="m", vocab=tuple("abc \n"), cell="lstm", num_layers=1, hidden_size=1,
                             embedding_size=1, state_size=3, max_chars_per_call=4096, signatures=SIGNATURES)
    model = ServedModel(name="m", version=1, metadata=metadata)
    check_vocabulary(model, "a cab\n", "prompt")
    with pytest.raises(APIError) as raised:
        check_vocabulary(model, "abXcYX", "prompt")
    assert raised.value.status == 400 and raised.value.param == "prompt"
    assert "'X', 'Y'" in raised.value.message
