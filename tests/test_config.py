"""Presets, flags and the refusal of bad values, each naming its flag."""
import pytest

from training.config import PRESETS, ConfigError, TrainConfig, build_parser, config_from_args
from training.train import main


def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_presets_resolve_and_flags_override():
    assert parse("--preset", "medium").hidden_size == 512
    assert parse("--preset", "large").num_layers == 3 and parse("--preset", "large").dropout == 0.5
    config = parse("--preset", "tiny", "--hidden-size", "48", "--sample-temperatures", "0.2", "0.9")
    assert (config.hidden_size, config.num_layers, config.sample_temperatures) == (48, 1, [0.2, 0.9])
    assert set(PRESETS) == {"tiny", "small", "medium", "large"}


def test_the_fp32_fallback_of_a_preset_leaves_flags_alone():
    fallback = parse("--preset", "small").fp32_fallback
    assert "epochs" in fallback and fallback["epochs"] < parse("--preset", "small").epochs
    assert "epochs" not in parse("--preset", "small", "--epochs", "4").fp32_fallback  # the user's epochs stand
    assert parse("--preset", "small", "--precision", "fp32").fp32_fallback == {}  # nothing to fall back from
    assert parse("--preset", "medium", "--precision", "bf16").fp32_fallback == {}


@pytest.mark.parametrize("fallback, flag", [({"epochs": 0}, "--epochs"), ({"dropout": 1.5}, "--dropout"),
                                            ({"colour": "red"}, "--fp32-fallback"),
                                            ({"precision": "bf16"}, "--fp32-fallback")])
def test_a_bad_fp32_fallback_is_refused_before_training(fallback, flag):
    with pytest.raises(ConfigError) as error:
        TrainConfig(precision="bf16", fp32_fallback=fallback).validate()
    assert error.value.flag == flag


def test_config_round_trips_through_json(tmp_path):
    config = parse("--preset", "tiny", "--dropout", "0.3")
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_help_documents_every_flag_in_groups(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for group in ("data:", "model:", "optimisation:", "checkpoints:", "output:"):
        assert group in out
    for flag in ("--corpus", "--seq-length", "--dropout", "--grad-clip", "--run-dir", "--resume", "--strategy",
                 "--precision"):
        assert flag in out


@pytest.mark.parametrize("argv, flag", [
    (["--hidden-size", "-4"], "--hidden-size"),
    (["--num-layers", "0"], "--num-layers"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--dropout", "1.0"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--preset", "huge"], "--preset"),
    (["--cell", "transformer"], "--cell"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--sample-temperatures", "0"], "--sample-temperatures"),
    (["--precision", "fp16"], "--precision"),
    (["--ema-momentum", "1.0"], "--ema-momentum"),
    (["--ema-momentum", "-0.5"], "--ema-momentum"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--weight-decay", "1.0"], "--weight-decay"),
])
def test_bad_values_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_non_numeric_value_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["--seq-length", "many"])
    assert "--seq-length" in capsys.readouterr().err


def test_config_error_names_flag():
    with pytest.raises(ConfigError, match="--embedding-size"):
        TrainConfig(embedding_size=0).validate()


def test_precision_defaults_to_fp32_and_the_flag_sets_it(tmp_path):
    assert parse("--preset", "medium").precision == "fp32"
    config = parse("--preset", "tiny", "--precision", "bf16")
    assert config.precision == "bf16"
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json").precision == "bf16"


def test_precision_fp16_is_refused_naming_the_flag_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--precision", "fp16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision must be one of fp32, bf16, got 'fp16'" in err and "Traceback" not in err


def test_config_json_of_a_run_from_before_the_precision_flag_loads_as_fp32(tmp_path):
    config = parse("--preset", "tiny")
    config.save(tmp_path / "config.json")
    text = (tmp_path / "config.json").read_text().replace('  "precision": "fp32",\n', "")
    assert '"precision"' not in text
    (tmp_path / "config.json").write_text(text)
    assert TrainConfig.load(tmp_path / "config.json").precision == "fp32"
