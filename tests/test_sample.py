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
    # The bounds in the messages are model_interface.signatures', where they are written once.
    (["--temperature", "-1"], "--temperature must be in [0, 100], got -1.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be in [0, "),
    (["--length", "-1"], "--length must be zero or more"),
    (["--min-p", "2"], "--min-p must be in [0, 1], got 2.0"),
    (["--prime", "\u2603 snow"], "--prime has characters the model never saw"),
    (["--version", "9"], "has no version 9 (it has 1)"),
    (["--seed", str(2 ** 64)], "--seed must be in [-9223372036854775808, 9223372036854775808)"),
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
    assert "holds no complete model version" in capsys.readouterr().err


def test_through_tf_serving_it_writes_the_same_text(exported_model, loaded_model):
    """--tfserving takes the gRPC transport (here against the PredictionService stand-in over the same version)."""
    from serving.tfserving_standin import SavedModelPredictionService, serve

    server, port = serve(SavedModelPredictionService("charlm", {1: loaded_model}))
    try:
        argv = ["--prime", "ROMEO:", "--length", "120", "--seed", "8", "--temperature", "0.9"]
        local, remote = io.StringIO(), io.StringIO()
        assert main(["--model", str(exported_model[0])] + argv, out=local) == 0
        assert main(["--tfserving", f"127.0.0.1:{port}"] + argv, out=remote) == 0
        assert remote.getvalue() == local.getvalue() and len(local.getvalue()) == len("ROMEO:") + 120 + 1
    finally:
        server.stop(0)
