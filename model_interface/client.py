"""One client for an exported version, over either of two transports:

- `InProcess`: the SavedModel loaded in this process with tf.saved_model.load (no Keras, no training code);
- `TFServingGrpc`: TensorFlow Serving's PredictionService over gRPC (tensorflow-serving-api), a deadline on
  every call.

Both answer `predict(signature, inputs, outputs, version)` with numpy arrays keyed by the names in
`model_interface.signatures`, and the version that ran; failures are the typed errors of
`model_interface.errors`. `ModelClient` adds the signatures as methods and the version's metadata.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from model_interface import signatures as sig
from model_interface.errors import DeadlineExceeded, InputRejected, ModelUnavailable, VersionNotFound
from model_interface.metadata import ModelMetadata
from model_interface.versions import resolve_version, version_number

# TF Serving's endpoints (its --port and --rest_api_port).
TFSERVING_GRPC_ADDRESS = "127.0.0.1:8500"
TFSERVING_REST_PORT = 8501
DEFAULT_DEADLINE_S = 10.0  # a chunk of a large batch takes well under a second
MAX_MESSAGE_BYTES = 256 << 20  # an activations reply is characters x layers x hidden floats; gRPC's default is 4 MB
# Every TF Serving replica gets calls: with a target that resolves to several addresses (in the cluster
# `dns:///<headless Service>.<namespace>.svc.cluster.local:8500`, one A record per ready pod; docs/deploy.md),
# round_robin keeps a connection to each and rotates over the connected ones. gRPC's default, pick_first, would
# send everything down one connection, and so to one pod. A replica that goes away drops out of the rotation as
# soon as its connection closes, and gRPC re-resolves the name then, finding the replicas that remain or replace it.
# A call that never left the client when that happened is retried by gRPC on its own (transparent retry). One that
# did and failed UNAVAILABLE (its connection died under it) is retried here, on the next connection in the rotation:
# Predict is idempotent — TF Serving runs the signatures as pure functions of their inputs (the state travels in
# the request), so running a call twice can only cost time. Nothing else is retried: DEADLINE_EXCEEDED is a slow
# server, which a retry would load more, and the errors of a bad request are the same on every replica. The
# call's deadline bounds all its attempts together; throttling stops retries when most calls fail (an outage).
TFSERVING_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "tensorflow.serving.PredictionService", "method": "Predict"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's default reconnect backoff grows to 120 s: a TF Serving restart would look like minutes of outage.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", json.dumps(TFSERVING_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    # The config above is ours: a TXT record in the cluster's DNS does not replace it.
    ("grpc.service_config_disable_resolution", 1),
    # gRPC keeps a request for retrying only up to 256 KiB by default, and a larger one is not retried at all;
    # a generate call of 64 streams of a 2x512 model carries 0.5 MB of state. Any request we may send qualifies.
    ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
    # Re-resolve the name at most every 5 s (gRPC's default, 30 s, could hold back finding a replaced replica).
    ("grpc.dns_min_time_between_resolutions_ms", 5000),
)


def rejection_message(error_text: str) -> str:
    """The model's own words from a TensorFlow error: the message of the failed assertion
    ("temperature must be > 0") rather than "Graph execution error:" and a node trace."""
    asserted = re.search(r"assertion failed: \[([^\]]+)\]", error_text)
    if asserted:
        return asserted.group(1)
    lines = [line.strip() for line in error_text.splitlines()
             if line.strip() and not line.strip().startswith(("Graph execution error", "Detected at node"))]
    return lines[0][:500] if lines else "rejected by the model"


class InProcess:
    """A version directory loaded in this process."""

    def __init__(self, version_dir: Path, warm_up: bool = True):
        import tensorflow as tf

        self.version_dir = Path(version_dir)
        self.version = version_number(self.version_dir)
        self.description = str(self.version_dir)
        self.loaded = tf.saved_model.load(str(self.version_dir))
        if warm_up:  # the first call of a signature pays for graph optimisation; pay it here, not in a request
            for signature, inputs in sig.warmup_calls(batches=(1,)):
                self.predict(signature, inputs)

    def predict(self, signature: str, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None,
                version: int | None = None) -> tuple[dict[str, np.ndarray], int]:
        import tensorflow as tf

        if version is not None and version != self.version:
            raise VersionNotFound(f"{self.description} is version {self.version}, not {version}")
        try:
            function = self.loaded.signatures[signature]
        except KeyError:
            raise InputRejected(f"the model has no {signature!r} signature") from None
        try:
            result = function(**{name: tf.constant(value) for name, value in inputs.items()})
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            raise InputRejected(rejection_message(getattr(e, "message", None) or str(e))) from None
        return {name: value.numpy() for name, value in result.items() if not outputs or name in outputs}, self.version

    def close(self) -> None:
        self.loaded = None


class TFServingGrpc:
    """TF Serving's PredictionService. The channel opens on first use, so in a gunicorn worker it is created
    after the fork; gRPC reconnects by itself after TF Serving restarts. `address` is a gRPC target: HOST:PORT,
    `dns:///NAME:PORT` (every address NAME resolves to, round-robin: CHANNEL_OPTIONS) or `ipv4:A:P,B:Q,...`."""

    def __init__(self, address: str = TFSERVING_GRPC_ADDRESS, model_name: str = "charlm",
                 deadline_s: float = DEFAULT_DEADLINE_S, version_label: str = ""):
        self.address, self.model_name, self.deadline_s = address, model_name, deadline_s
        self.version_label = version_label  # used when no version number is asked for
        self.description = f"TF Serving at {address}, model {model_name}"
        self._stub = self._channel = None
        self._lock = threading.Lock()

    def stub(self):
        with self._lock:
            if self._stub is None:
                import grpc
                from tensorflow_serving.apis import prediction_service_pb2_grpc

                self._channel = grpc.insecure_channel(self.address, options=list(CHANNEL_OPTIONS))
                self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            return self._stub

    def predict(self, signature, inputs, outputs=None, version=None):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        elif self.version_label:
            request.model_spec.version_label = self.version_label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        if outputs:
            request.output_filter.extend(outputs)
        try:
            response = self.stub().Predict(request, timeout=self.deadline_s)
        except grpc.RpcError as e:
            raise self._translate(e, version) from None
        return ({name: tf.make_ndarray(proto) for name, proto in response.outputs.items()},
                response.model_spec.version.value)

    def _translate(self, error, version):
        import grpc

        code, details = error.code(), (error.details() or "").strip()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{self.description} did not answer within {self.deadline_s:g} s")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InputRejected(rejection_message(details))
        if code == grpc.StatusCode.NOT_FOUND and version is not None:
            return VersionNotFound(f"{self.model_name} version {version} is not served by {self.description}")
        return ModelUnavailable(f"{self.description}: {code.name}: {details[:300]}")

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None


class ModelClient:
    """One version of a model, through a transport. `version=None` follows what the transport serves (TF
    Serving's newest or labelled one); the metadata is read from the version itself on first use."""

    def __init__(self, transport, version: int | None = None):
        self.transport, self.version = transport, version
        self._metadata: ModelMetadata | None = None

    @classmethod
    def open(cls, model: str | Path | None = None, tfserving: str | None = None, name: str = "charlm",
             version: int | None = None, deadline_s: float = 300.0, what: str = "model") -> "ModelClient":
        """`model`: a model or version directory, loaded in-process; `tfserving`: HOST:PORT of TF Serving.
        `what` names where the path came from (a flag, a setting) in the message if it is wrong."""
        if tfserving:
            return cls(TFServingGrpc(tfserving, name, deadline_s), version)
        if model is None:
            raise ValueError("give a model directory or a TensorFlow Serving address")
        version_dir = resolve_version(Path(model), version, what)  # a wrong path fails before TensorFlow's slow import
        return cls(InProcess(version_dir, warm_up=False))

    @property
    def description(self) -> str:
        return self.transport.description + (f" version {self.version}" if self.version is not None else "")

    def call(self, signature: str, inputs: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self.transport.predict(signature, inputs, outputs, self.version)[0]

    @property
    def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            out = self.call(sig.METADATA, sig.metadata_inputs())
            self._metadata = ModelMetadata.from_json(out["info"][0], f"{self.description}: metadata")
        return self._metadata

    def generate(self, prompts: Sequence[str], num_chars: Sequence[int] | int,
                 settings: Sequence[SamplingSettings] | SamplingSettings = None,
                 states: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One `generate` call: text (decoded str per row), state, unknown_chars."""
        batch = len(prompts)
        num_chars = [num_chars] * batch if isinstance(num_chars, int) else list(num_chars)
        settings = settings or sig.SamplingSettings()
        settings = [settings] * batch if isinstance(settings, sig.SamplingSettings) else list(settings)
        states = sig.fresh_states(batch) if states is None else states
        out = self.call(sig.GENERATE, sig.generate_inputs(prompts, states, num_chars, settings))
        return {**out, "text": [t.decode("utf-8") for t in out["text"]]}

    def score(self, texts: Sequence[str], states: np.ndarray | None = None,
              outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self.call(sig.SCORE, sig.text_inputs(texts, states), outputs)

    def activations(self, texts: Sequence[str], states: np.ndarray | None = None,
                    outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self.call(sig.ACTIVATIONS, sig.text_inputs(texts, states), outputs)

    def close(self) -> None:
        self.transport.close()


SamplingSettings = sig.SamplingSettings
