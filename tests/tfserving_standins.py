"""A stand-in speaking TF Serving's PredictionService protocol over an exported SavedModel — not TF Serving.

The TF Serving binary cannot be installed on the development machines, so the `tfserving` backend is tested
against this: a gRPC server built from tensorflow-serving-api's own protos that runs the same SavedModel
(tf.saved_model.load) and answers Predict the way TF Serving does for what the gateway uses: model_spec name,
optional version number or label (newest if absent), signature_name, output_filter, the version it ran in the reply, and
NOT_FOUND / INVALID_ARGUMENT / FAILED_PRECONDITION errors. Batching, model config files, warm-up, REST and the
other services are not imitated.
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


class SavedModelPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model_name: str, versions: dict[int, object], labels: dict[str, int] | None = None):
        self.model_name = model_name
        self.versions = dict(versions)  # version -> tf.saved_model.load(...) result
        self.labels = dict(labels or {})  # version_label -> version, as TF Serving's model config assigns them
        self.delay_s = 0.0  # to exceed a client's deadline
        self.requests: list[predict_pb2.PredictRequest] = []
        self._lock = threading.Lock()
        for loaded in self.versions.values():
            warm_up(loaded)

    def Predict(self, request, context):
        with self._lock:
            self.requests.append(request)
        spec = request.model_spec
        if spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version_label"):
            if spec.version_label not in self.labels:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Unrecognized servable version label: {spec.version_label}")
            version = self.labels[spec.version_label]
        else:
            version = spec.version.value if spec.HasField("version") else max(self.versions)
        if version not in self.versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Specific({spec.name}, {version})")
        signature_name = spec.signature_name or "serving_default"
        signatures = self.versions[version].signatures
        if signature_name not in signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f'Serving signature name: "{signature_name}" not found in signature def')
        function = signatures[signature_name]
        expected = set(function.structured_input_signature[1])
        if set(request.inputs) != expected:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Expected inputs {sorted(expected)}, got {sorted(request.inputs)}")
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        try:
            outputs = function(**inputs)
        except tf.errors.InvalidArgumentError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
        if self.delay_s:
            time.sleep(self.delay_s)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def warm_up(loaded) -> None:
    """Each signature's first call pays for graph optimisation; TF Serving pays it at load with its warm-up
    records (--enable_model_warmup), so the stand-in pays it before serving too."""
    empty = {"text": tf.constant(["a"]), "state": tf.zeros([1, 0])}
    loaded.signatures["metadata"](request=tf.constant([0]))
    loaded.signatures["score"](**empty)
    loaded.signatures["activations"](**empty)
    loaded.signatures["generate"](prompt=tf.constant([""]), state=tf.zeros([1, 0]), num_chars=tf.constant([2]),
                                  temperature=tf.ones([1]), top_k=tf.zeros([1], tf.int32), top_p=tf.ones([1]),
                                  seed=tf.zeros([1], tf.int64))


def serve(service: SavedModelPredictionService, port: int = 0) -> tuple[grpc.Server, int]:
    """Start serving on 127.0.0.1 (port 0 = any free one) -> (server, port). Stop with server.stop(0)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port
