"""Talking to an exported model version, and running long texts through it.

A model is reached in-process (`tf.saved_model.load` of a version directory) or through TensorFlow Serving's
gRPC PredictionService; both answer `call(signature, inputs, outputs)` with numpy arrays keyed by the names in
docs/model-signatures.md. `run_text` feeds a text of any length through a signature: the text is cut into
regions that run side by side as the rows of one batch, each region fed chunk by chunk with its state carried
from call to call, and primed with the characters before it so it starts where a single pass would be.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

FRESH_STATE_COLUMNS = 0  # a `state` of shape (batch, 0) starts a fresh text
MAX_CHARS_PER_CALL = 4096  # the export's limit for generation; also a sane size for one scoring call


class ModelError(ValueError):
    """A model directory, address or text the analysis cannot use; the message says which and why."""


def version_directory(path: Path) -> Path:
    """A version directory itself, or the newest complete integer version under a model directory."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    if not path.is_dir():
        raise ModelError(f"{path}: no such directory (expected exported_models/<name> or one of its versions)")
    versions = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file())
    if not versions:
        raise ModelError(f"{path}: holds no complete model version (no <integer>/saved_model.pb); "
                         f"run `make train` or `python -m training.export` first")
    return versions[-1][1]


class ExportedModel:
    """What every analysis needs from a model version: its facts, and `call`."""

    def __init__(self, description: str):
        self.description = description  # where it came from, for the report
        meta = self.call("metadata", {"request": np.zeros([1], np.int32)})
        self.info = json.loads(as_str(meta["info"][0]))  # assets.extra/charlm.json
        self.vocab = tuple(as_str(c) for c in meta["vocab"][0])
        self.state_size = int(meta["state_size"][0])
        self.num_layers = int(self.info["num_layers"])
        self.hidden_size = int(self.info["hidden_size"])
        self.cell = self.info.get("cell", "lstm")
        # The split training used: validation is the last val_fraction of the corpus.
        self.val_fraction = float(self.info.get("config", {}).get("val_fraction", 0.1))

    def call(self, signature: str, inputs: dict[str, np.ndarray],
             outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def split(self, text: str) -> tuple[str, str]:
        """(train, validation) exactly as training cut the corpus: validation is the end."""
        n_train = int(len(text) * (1.0 - self.val_fraction))
        return text[:n_train], text[n_train:]

    def check_vocabulary(self, text: str) -> None:
        unknown = sorted(set(text) - set(self.vocab))
        if unknown:
            raise ModelError(f"the text has {len(unknown)} character(s) outside the model's vocabulary "
                             f"({self.description}): {''.join(unknown)[:80]!r}; the model cannot read it")


class LocalModel(ExportedModel):
    """A version loaded in this process; no training code, no Keras."""

    def __init__(self, loaded, description: str):
        self.loaded = loaded
        super().__init__(description)

    @classmethod
    def load(cls, path: Path) -> "LocalModel":
        version = version_directory(path)  # a wrong path fails before TensorFlow's slow import
        import tensorflow as tf

        return cls(tf.saved_model.load(str(version)), str(version))

    def call(self, signature, inputs, outputs=None):
        import tensorflow as tf

        result = self.loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items() if outputs is None or k in outputs}


class TFServingModel(ExportedModel):
    """A version served by TensorFlow Serving (gRPC PredictionService, port 8500 by default)."""

    def __init__(self, address: str, name: str = "charlm", version: int | None = None, timeout_s: float = 300.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        # A chunk of activations is characters x layers x hidden floats per output: far above gRPC's 4 MB default.
        limit = 1 << 30
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", limit),
                                                               ("grpc.max_send_message_length", limit)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.name, self.version, self.timeout_s = name, version, timeout_s
        super().__init__(f"TF Serving {address} model {name}" + (f" version {version}" if version else ""))

    def call(self, signature, inputs, outputs=None):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        if outputs:
            request.output_filter.extend(outputs)
        response = self.stub.Predict(request, timeout=self.timeout_s)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def open_model(model: str | Path | None = None, tfserving: str | None = None, name: str = "charlm",
               version: int | None = None) -> ExportedModel:
    """`model` is a model or version directory (in-process); `tfserving` is HOST:PORT of TensorFlow Serving."""
    if tfserving:
        return TFServingModel(tfserving, name, version)
    if model is None:
        raise ModelError("give a model directory (--model) or a TensorFlow Serving address (--tfserving)")
    return LocalModel.load(Path(model))


def as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def region_bounds(start: int, end: int, regions: int) -> list[tuple[int, int]]:
    """[start, end) cut into up to `regions` contiguous, nearly equal, non-empty pieces."""
    cuts = np.linspace(start, end, max(1, regions) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def run_text(model: ExportedModel, signature: str, text: str, outputs: tuple[str, ...], start: int = 0,
             end: int | None = None, regions: int = 8, chunk_chars: int = 2000, prime_chars: int = 256,
             progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Run text[start:end] through `signature` ("score" or "activations"); returns each requested output for
    every character in order, time first: log_probs (time,), activations (time, layers, hidden).

    Region r > 0 (and region 0 when start > 0) is primed with the `prime_chars` characters before it (through
    `score`, whose outputs are dropped), so its predictions match one continuous pass closely (to ~1e-4 in log
    probability on tiny-shakespeare): what a char-level LSTM predicts rarely depends on more than a few hundred
    characters. A cell that *counts* from the start of the text (quote parity, bracket depth) does depend on
    everything before, so activations for those run as one region.
    """
    end = len(text) if end is None else end
    if not 0 <= start < end <= len(text):
        raise ModelError(f"cannot run characters [{start}, {end}) of a {len(text):,}-character text")
    chunk_chars = max(1, min(chunk_chars, MAX_CHARS_PER_CALL))
    model.check_vocabulary(text[max(0, start - prime_chars):end])
    bounds = region_bounds(start, end, regions)
    primes = [text[max(0, a - prime_chars):a] for a, _ in bounds]
    state = np.zeros([len(bounds), FRESH_STATE_COLUMNS], np.float32)
    if any(primes):
        state = model.call("score", {"text": np.array(primes, object), "state": state}, ("state",))["state"]

    pieces: list[dict[str, list[np.ndarray]]] = [{name: [] for name in outputs} for _ in bounds]
    done, total = 0, end - start
    offsets = [a for a, _ in bounds]
    while any(offset < b for offset, (_, b) in zip(offsets, bounds)):
        chunks = [text[offset:min(offset + chunk_chars, b)] for offset, (_, b) in zip(offsets, bounds)]
        out = model.call(signature, {"text": np.array(chunks, object), "state": state},
                         tuple(outputs) + ("lengths", "state"))
        state = out["state"]  # rows whose region is finished got "" and keep their state unchanged
        for row, chunk in enumerate(chunks):
            length = int(out["lengths"][row])
            if length != len(chunk):
                raise ModelError(f"the model read {length} characters of a {len(chunk)}-character chunk")
            for name in outputs:
                pieces[row][name].append(out[name][row, :length])
            offsets[row] += length
            done += length
        if progress:
            progress(done, total)
    return {name: np.concatenate([part for region in pieces for part in region[name]]) for name in outputs}
