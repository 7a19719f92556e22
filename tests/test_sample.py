"""The sampling CLI: prints as it generates, same seed same text, bad flags named."""
import io

import pytest

from training.sample import main


class RecordingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_prints_prime_then_text_chunk_by_chunk(exported_model):
    out = RecordingStream()
    assert main(["--model", str(exported_model[0]), "--prime", "ROMEO:", "--length", "300", "--seed", "3"],
                out=out) == 0
    text = out.getvalue()
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 300 + 1
    # Written as generated: the first flush holds only the prime, then a short first chunk, then more.
    assert out.flushed[0] == "ROMEO:" and len(out.flushed[1]) == len("ROMEO:") + 16 and len(out.flushed) >= 4
    again = RecordingStream()
    main(["--model", str(exported_model[1]), "--prime", "ROMEO:", "--length", "300", "--seed", "3"], out=again)
    assert again.getvalue() == text


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "0"], "--temperature must be positive"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be zero"),
    (["--length", "-1"], "--length must be zero or more"),
    (["--prime", "\u2603 snow"], "--prime has characters the model never saw"),
    (["--version", "9"], "--version 9: not in"),
    (["--seed", str(2 ** 64)], "--seed must fit in 64 bits"),
])
def test_bad_flags_are_refused_by_name(exported_model, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(exported_model[0])] + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_model_directory_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "nope")])
    assert "nope: no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path)])
    assert "holds no exported version" in capsys.readouterr().err
