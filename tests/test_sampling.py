"""The sample after each training epoch is the exported graph's own: the same seed gives the same text."""
import dataclasses
from pathlib import Path

from model_interface.client import InProcess, ModelClient
from model_interface.signatures import SamplingSettings
from training.config import TrainConfig
from training.corpus import Vocab
from training.export import export_version
from training.model import CharRNN
from training.sampling import SampleEachEpoch


def test_an_epoch_sample_is_what_the_export_of_its_weights_writes(trained_run, tmp_path, capsys):
    config, _ = trained_run
    run_dir = Path(config.run_dir)
    vocab = Vocab.load(run_dir / "vocab.json")
    model = CharRNN(len(vocab), TrainConfig.load(run_dir / "config.json"))
    model.load_weights(run_dir / "last.weights.h5")  # the weights at the end of the last epoch
    shown = dataclasses.replace(config, verbose=1, sample_length=150, sample_temperatures=[0.7, 1.0])
    SampleEachEpoch(model, vocab, shown).on_epoch_end(2)
    printed = capsys.readouterr().out
    seed = config.seed + 2
    assert f"sample after epoch 3, temperature 0.7, seed {seed}" in printed

    client = ModelClient(InProcess(export_version(run_dir, tmp_path, "charlm", checkpoint="last")))
    for t in (0.7, 1.0):
        text = client.generate(["\n"], 150, SamplingSettings(temperature=t, seed=seed))["text"][0]
        assert len(text) == 150 and f"seed {seed} (prime '\\n') ---\n{text}\n---" in printed
    other = client.generate(["\n"], 150, SamplingSettings(temperature=0.7, seed=seed + 1))["text"][0]
    assert other not in printed  # the seed is what makes it this text
