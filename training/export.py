"""Export a trained run as a self-contained SavedModel version for TensorFlow Serving, the gateway and analysis.

    python -m training.export --run-dir runs/charlm [--export-dir exported_models] [--model-name charlm]
                              [--checkpoint best|last] [--if-changed] [--precision fp32|bf16]

Writes exported_models/<name>/<version>/ through model_interface.versions.publish_version (TF Serving's layout,
the next integer, appearing whole or not at all): the graph (training/graph.py: vocabulary, sampler, plain
tf.Variables — no Keras needed to load it), assets.extra/charlm.json (model_interface.metadata) and TF Serving's
warm-up records. Signatures are documented in docs/model-signatures.md.

--precision bf16 stores the weights the generation loop reads as bfloat16 and multiplies them in bf16
(training/graph.py); the signatures, the state and the log-probabilities stay float32.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from model_interface import signatures, versions
from model_interface.chat import LAYOUTS, ChatTemplate, ChatTemplateError, layout_of
from model_interface.errors import MetadataError
from model_interface.metadata import CREATED_FORMAT, ModelMetadata
from training.precision import BF16_CPU_FLAGS, PRECISIONS, cpu_bf16_flags


class ExportError(ValueError):
    pass


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_warmup(path: Path, model_name: str) -> None:
    """TF Serving replays these PredictionLogs at load (--enable_model_warmup) so no user pays for tracing."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in signatures.warmup_calls():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def chat_template(choice: str, vocab, corpus_path: Path | None = None, stop: tuple[str, ...] = ()) -> ChatTemplate | None:
    """The version's chat template: `auto` (the corpus's own layout when the corpus is at hand, else plain; none if
    even plain needs characters the vocabulary lacks), a layout name (play, plain) or a Jinja2 file. A template
    whose own characters the vocabulary lacks is refused here, not at request time."""
    if choice == "auto":
        layout = layout_of(corpus_path.read_text(encoding="utf-8")) if corpus_path and corpus_path.is_file() else "plain"
        for name in dict.fromkeys([layout, "plain"]):
            try:
                template = ChatTemplate.layout(name)
                template.check_vocabulary(vocab.chars)
                return template
            except ChatTemplateError:
                continue
        return None
    if choice in LAYOUTS:
        template = ChatTemplate.layout(choice)
    else:
        try:
            template = ChatTemplate(Path(choice).read_text(encoding="utf-8"), tuple(stop))
        except OSError as e:
            raise ExportError(f"--chat-template {choice}: cannot be read ({e.strerror or e})") from None
    try:
        template.check_vocabulary(vocab.chars)
    except ChatTemplateError as e:
        raise ExportError(f"--chat-template {choice}: {e}") from None
    return template


def model_metadata(model_name: str, vocab, config, source: dict, val_loss: float | None = None,
                   corpus: dict | None = None, chat: ChatTemplate | None = None,
                   precision: str = "fp32") -> ModelMetadata:
    import tensorflow as tf

    return ModelMetadata(
        model_name=model_name, vocab=tuple(vocab.chars), cell=config.cell, num_layers=config.num_layers,
        hidden_size=config.hidden_size, embedding_size=config.embedding_size,
        state_size=ModelMetadata.state_size_for(config.cell, config.num_layers, config.hidden_size),
        max_chars_per_call=signatures.MAX_CHARS_PER_CALL, signatures=signatures.SIGNATURES,
        val_fraction=config.val_fraction, corpus_sha256=(corpus or {}).get("sha256"),
        corpus_chars=(corpus or {}).get("chars"), val_loss=val_loss,
        val_bpc=val_loss / float(np.log(2)) if val_loss is not None else None,
        config=dataclasses.asdict(config), source=source,
        chat_template=chat.source if chat else None, chat_stop=chat.stop if chat else (), precision=precision,
        created=time.strftime(CREATED_FORMAT, time.gmtime()), tensorflow=tf.__version__)


def publish_model(model, vocab, config, export_dir: Path, model_name: str, metadata: ModelMetadata | None = None,
                  precision: str = "fp32") -> Path:
    """Build the SavedModel of a Keras CharRNN and publish it as the next version of export_dir/model_name.
    Every export goes through here: trained runs, untrained (random-weights) models, hand-set weights.
    The graph's precision is the metadata's when given, else `precision`."""
    import tensorflow as tf

    from training.graph import CharLMGraph, ModelShape

    metadata = metadata or model_metadata(model_name, vocab, config, {"checkpoint": "untrained"},
                                          chat=chat_template("auto", vocab), precision=precision)
    module = CharLMGraph(ModelShape.of(model), vocab.chars, metadata.to_json(), precision=metadata.precision)
    module.assign_weights(model)

    def build(directory: Path) -> None:
        concrete = {name: getattr(module, name).get_concrete_function() for name in signatures.SIGNATURES}
        concrete[signatures.SERVING_DEFAULT] = concrete[signatures.GENERATE]
        tf.saved_model.save(module, str(directory), signatures=concrete)
        metadata.write(directory)
        write_warmup(directory / versions.EXTRA_DIR / versions.WARMUP_FILE, model_name)

    return versions.publish_version(Path(export_dir) / model_name, build)


def export_untrained(config, chars, export_dir: Path, model_name: str = "charlm", seed: int = 0,
                     precision: str = "fp32") -> Path:
    """A version with random weights (Keras' initialisers, seeded): the same graph and work as a trained model,
    for benchmarks and tests. The same seed gives the same weights at either precision."""
    import keras

    from training.corpus import Vocab
    from training.model import CharRNN

    keras.utils.set_random_seed(seed)
    vocab = Vocab(tuple(chars))
    return publish_model(CharRNN(len(vocab), config), vocab, config, export_dir, model_name, precision=precision)


def export_version(run_dir: Path, export_dir: Path = Path("exported_models"), model_name: str = "charlm",
                   checkpoint: str = "best", if_changed: bool = False, chat: str = "auto",
                   chat_stop: tuple[str, ...] = (), precision: str = "fp32") -> Path:
    """Export the run's checkpoint as the next version; returns the version directory."""
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from training.config import TrainConfig
    from training.corpus import Vocab
    from training.model import CharRNN

    run_dir = Path(run_dir)
    weights = run_dir / f"{checkpoint}.weights.h5"
    for needed in (run_dir / "config.json", run_dir / "vocab.json", weights):
        if not needed.is_file():
            raise ExportError(f"{needed}: not found; is {run_dir} a finished training run? "
                              f"(--checkpoint {checkpoint})")
    config = TrainConfig.load(run_dir / "config.json")
    vocab = Vocab.load(run_dir / "vocab.json")
    weights_sha256 = file_sha256(weights)
    newest = versions.newest_version(Path(export_dir) / model_name)
    if if_changed and newest is not None:
        try:
            previous = ModelMetadata.read(newest)
            previous = previous.source.weights_sha256, previous.precision
        except MetadataError:
            previous = None
        if previous == (weights_sha256, precision):
            print(f"{newest} already holds {weights} at {precision}; nothing to export")
            return newest

    model = CharRNN(len(vocab), config)
    from training.checkpoints import CheckpointError, load_weights

    try:
        load_weights(model, weights)  # checked whole (and against its sha256) before Keras reads it
    except CheckpointError as e:
        other = "last" if checkpoint == "best" else "best"
        raise ExportError(f"{e}. Nothing was exported; export the run's other checkpoint (--checkpoint {other}) "
                          f"if it has one, or train again") from None
    corpus = json.loads((run_dir / "corpus.json").read_text()) if (run_dir / "corpus.json").exists() else {}
    val_loss = None
    if (run_dir / "history.csv").exists():
        import csv

        losses = [float(r["val_loss"]) for r in csv.DictReader(open(run_dir / "history.csv"))]
        val_loss = min(losses) if checkpoint == "best" and losses else (losses[-1] if losses else None)
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint, "weights_sha256": weights_sha256}
    corpus_path = Path(corpus["path"]) if corpus.get("path") else None
    template = chat_template(chat, vocab, corpus_path, chat_stop)
    metadata = model_metadata(model_name, vocab, config, source, val_loss, corpus, template, precision)
    return publish_model(model, vocab, config, export_dir, model_name, metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the training run to export")
    parser.add_argument("--export-dir", default="exported_models", help="root of the model directories")
    parser.add_argument("--model-name", default="charlm", help="the model's name (a directory under --export-dir)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best validation loss, or the final weights")
    parser.add_argument("--if-changed", action="store_true",
                        help="do nothing if the newest version was exported from the same weights")
    parser.add_argument("--chat-template", default="auto", metavar="auto|play|plain|FILE",
                        help="how /v1/chat/completions writes messages: the corpus's own layout (auto), a named "
                             "layout, or a Jinja2 file (model_interface/chat.py)")
    parser.add_argument("--chat-stop", action="append", default=[], metavar="TEXT",
                        help="with a template FILE: a string that ends the model's reply (repeatable)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="how the version stores and multiplies the weights generation reads: float32, or "
                             "bfloat16 (half the bytes per character; state, signatures and log-probs stay "
                             "float32). Default: fp32")
    args = parser.parse_args(argv)
    if not args.model_name or "/" in args.model_name or args.model_name.startswith("."):
        parser.error(f"--model-name must be a plain directory name, got {args.model_name!r}")
    if args.precision == "bf16" and not cpu_bf16_flags():
        print(f"{parser.prog}: note: this CPU has no bf16 units (none of {', '.join(BF16_CPU_FLAGS)} in "
              f"/proc/cpuinfo); the bf16 version works on it, but oneDNN emulates bf16 products here, so it "
              f"generates slower than fp32 on this machine (batches of streams several times slower), though "
              f"not on one with AVX512-BF16 or AMX",
              file=sys.stderr)
    try:
        version = export_version(Path(args.run_dir), Path(args.export_dir), args.model_name, args.checkpoint,
                                 args.if_changed, args.chat_template, tuple(args.chat_stop), args.precision)
    except ExportError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
