"""The `tfserving` backend: TensorFlow Serving's PredictionService over gRPC (tensorflow-serving-api).

The gateway carries the state; TF Serving only runs the exported signatures, as pure functions. The channel
is opened on first use, so in a gunicorn worker it is created after the fork; gRPC reconnects by itself after
TF Serving restarts, with the backoff capped low so a restarted server is found again within seconds.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from serving.backends import (METADATA_REQUEST, Backend, BackendRejected, BackendTimeout, BackendUnavailable,
                              ModelInfo, VersionGone, rejection_message)

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:8500"  # TF Serving's --port (gRPC)
MAX_MESSAGE_BYTES = 64 << 20  # an activations reply is characters x hidden floats; gRPC's default is 4 MB
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's default reconnect backoff grows to 120 s: a TF Serving restart would look like minutes of 503s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class TFServingBackend(Backend):
    kind = "tfserving"

    def __init__(self, settings):
        super().__init__(settings)
        self.address = settings.tfserving_address or DEFAULT_ADDRESS
        self.timeout_s = settings.tfserving_timeout_s
        self.version_label = settings.tfserving_version_label
        self._stub = None
        self._channel = None
        self._lock = threading.Lock()

    def stub(self):
        with self._lock:
            if self._stub is None:
                import grpc
                from tensorflow_serving.apis import prediction_service_pb2_grpc

                self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
                self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            return self._stub

    def predict(self, signature: str, version: int | None, inputs: dict[str, np.ndarray],
                outputs: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], int]:
        """One Predict call with a deadline -> (outputs, the version TF Serving ran)."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.name
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
            response = self.stub().Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e, version) from None
        return ({name: tf.make_ndarray(proto) for name, proto in response.outputs.items()},
                response.model_spec.version.value)

    def _translate(self, error, version):
        import grpc

        code, details = error.code(), (error.details() or "").strip()
        where = f"TF Serving at {self.address}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BackendTimeout(f"{where} did not answer within {self.timeout_s:g} s")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return BackendRejected(rejection_message(details))
        if code == grpc.StatusCode.NOT_FOUND and version is not None:
            return VersionGone(f"{self.name} version {version} is no longer served by {where}; start again")
        return BackendUnavailable(f"{where}: {code.name}: {details[:300]}")

    def call(self, signature, version, inputs, outputs=None):
        return self.predict(signature, version, inputs, outputs)[0]

    def refresh(self) -> None:
        # No version number in the request: TF Serving answers with the newest it serves (or the labelled one),
        # and says which; the streams that start from now on are pinned to that number.
        _, version = self.predict("metadata", None, METADATA_REQUEST)
        if self._model is None or version != self._model.version:
            self._model = ModelInfo.describe(self, version)
            log.info("TF Serving at %s serves %s version %d", self.address, self.name, version)

    def versions(self) -> list[int]:
        return [self.model().version]

    def check(self) -> ModelInfo:
        if self._model is None:
            self.refresh()
        return super().check()

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None
