"""Stand-ins for TF Serving, for tests and benchmarks on machines without it. They are NOT TF Serving, and the
gateway itself never uses them (nothing under serving/ imports this module; tests/ and benchmarks/ do).

Two stand-ins: TF Serving's gRPC PredictionService over an exported SavedModel, and its REST model status.

The TF Serving binary cannot be installed on the development machines, so the `tfserving` backend is tested (and
benchmarked) against the first (`SavedModelPredictionService`, `serve`): a gRPC server built from
tensorflow-serving-api's own protos that runs the same SavedModel (tf.saved_model.load) and answers Predict the way
TF Serving does for what the gateway uses: model_spec name, optional version number or label (newest if absent),
signature_name, output_filter, the version it ran in the reply, and NOT_FOUND / INVALID_ARGUMENT /
FAILED_PRECONDITION errors. Batching, model config files, warm-up, REST and the other services are not imitated by
it. For the faults of the TF Serving path (tests/test_serving_tfserving_faults.py) it answers late on demand (every
call: `delay_s`; the next few: `delay_next`), changes the versions it serves while running (`set_versions`: a new
version appearing, an old one unloaded), and `StandInServer` kills it and starts it again on the same port.

The second (`ModelStatusStandIn`, `serve_model_status`) is an HTTP server answering the one REST request TF
Serving's readiness probe makes (k8s/base/tfserving/model-available.sh), GET /v1/models/<name>, with whatever
status code and body the test gives it; it loads no model. tests/k8s/test_k8s_readiness_probe.py runs the probe
against it.
"""
from __future__ import annotations

import http.server
import json
import threading
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from model_interface.signatures import warmup_calls


class SavedModelPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model_name: str, versions: dict[int, object], labels: dict[str, int] | None = None):
        self.model_name = model_name
        self.versions = dict(versions)  # version -> tf.saved_model.load(...) result
        self.labels = dict(labels or {})  # version_label -> version, as TF Serving's model config assigns them
        self.delay_s = 0.0  # every call answers this late: a slow server, past a client's deadline
        self._late: list[list] = []  # [signature or None, seconds, calls left], from delay_next
        self.requests: list[predict_pb2.PredictRequest] = []  # every call, in arrival order
        self.delayed: list[predict_pb2.PredictRequest] = []  # the calls delay_next made late
        self._lock = threading.Lock()
        for loaded in self.versions.values():
            warm_up(loaded)

    def set_versions(self, versions: dict[int, object]) -> None:
        """Serve exactly these versions from now on, as TF Serving does when a new version appears in its model
        directory or an old one is unloaded: a call naming a version no longer served gets NOT_FOUND, a call naming
        none the newest. Loaded objects not served before are warmed up first, as TF Serving loads a version
        before it serves it."""
        for loaded in versions.values():
            if not any(loaded is served for served in self.versions.values()):
                warm_up(loaded)
        self.versions = dict(versions)  # one assignment: a call sees the old dict or the new one

    def delay_next(self, seconds: float, calls: int = 1, signature: str | None = None) -> None:
        """The next `calls` Predict calls (of `signature` only, if given) answer `seconds` late, on top of
        `delay_s`: a call stuck in TF Serving while the calls after it are fast. They are kept in `delayed`."""
        with self._lock:
            self._late.append([signature, seconds, calls])

    def _delay_for(self, request) -> float:
        signature = request.model_spec.signature_name or "serving_default"
        with self._lock:
            self.requests.append(request)
            for late in self._late:
                if late[0] in (None, signature) and late[2] > 0:
                    late[2] -= 1
                    self.delayed.append(request)
                    return self.delay_s + late[1]
        return self.delay_s

    def Predict(self, request, context):
        delay = self._delay_for(request)
        versions = self.versions
        spec = request.model_spec
        if spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version_label"):
            if spec.version_label not in self.labels:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Unrecognized servable version label: {spec.version_label}")
            version = self.labels[spec.version_label]
        else:
            version = spec.version.value if spec.HasField("version") else max(versions)
        if version not in versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Specific({spec.name}, {version})")
        signature_name = spec.signature_name or "serving_default"
        signatures = versions[version].signatures
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
        if delay:
            wait(delay, context)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def wait(seconds: float, context) -> None:
    """Sleep `seconds`, or less if the call ends first (its client's deadline passed, it was cancelled, the server
    stopped): a late call holds none of the server's threads longer than its client waits for it."""
    ended = threading.Event()
    if context.add_callback(ended.set):
        ended.wait(seconds)


def warm_up(loaded) -> None:
    """Each signature's first call pays for graph optimisation; TF Serving pays it at load with its warm-up
    records (--enable_model_warmup), so the stand-in pays it before serving too, with the same calls."""
    for signature, inputs in warmup_calls(batches=(1,)):
        loaded.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})


def serve(service: SavedModelPredictionService, port: int = 0) -> tuple[grpc.Server, int]:
    """Start serving on 127.0.0.1 (port 0 = any free one) -> (server, port). Stop with server.stop(0)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound or (port and bound != port):
        raise RuntimeError(f"the stand-in cannot listen on 127.0.0.1:{port}")
    server.start()
    return server, bound


class StandInServer:
    """A stand-in PredictionService on 127.0.0.1 that can be killed and started again on the same port, as TF
    Serving is when its pod is killed and restarted (the gateway's target stays the same). Use as a context
    manager, or call stop() at the end."""

    def __init__(self, service: SavedModelPredictionService, port: int = 0):
        self.service = service
        self.server, self.port = serve(service, port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    def stop(self) -> None:
        """TF Serving killed: the port closes, calls in flight end with an error on the client, new calls find no
        server. Returns once the port is closed."""
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    def start(self, service: SavedModelPredictionService | None = None) -> None:
        """TF Serving back on the same port: `service` (a new process: a fresh stand-in), or the same one."""
        if self.server is not None:
            raise RuntimeError("the stand-in is running already")
        if service is not None:
            self.service = service
        self.server, _ = serve(self.service, self.port)

    def __enter__(self) -> "StandInServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- TF Serving's REST model status -------------------------------------------------------------------------------

class _ModelStatusRequest(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        prefix = "/v1/models/"
        if self.path == prefix + self.server.model_name:
            status, body = self.server.reply
        elif self.path.startswith(prefix):
            status, body = 404, json.dumps({"error": f"Could not find any versions of model {self.path[len(prefix):]}"})
        else:
            status, body = 404, json.dumps({"error": f"Malformed request: GET {self.path}"})
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class ModelStatusStandIn(http.server.ThreadingHTTPServer):
    """Answers GET /v1/models/<model_name> on 127.0.0.1 with `reply`, (HTTP status, JSON body), which a test sets to
    what TF Serving would answer, e.g. (200, '{"model_version_status": [{"version": "2", "state": "AVAILABLE",
    ...}]}'). Other models get TF Serving's 404 "Could not find any versions of model ..."."""

    def __init__(self, model_name: str, reply: tuple[int, str], port: int = 0):
        super().__init__(("127.0.0.1", port), _ModelStatusRequest)
        self.model_name = model_name
        self.reply = reply

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address):
        pass  # a probe that gave up and closed its connection is no error of the server's

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve_model_status(model_name: str, reply: tuple[int, str], port: int = 0) -> ModelStatusStandIn:
    """Start answering on 127.0.0.1 (port 0 = any free one; see .port). Change .reply at any time; stop with .stop()."""
    server = ModelStatusStandIn(model_name, reply, port)
    threading.Thread(target=server.serve_forever, name="model-status-stand-in", daemon=True).start()
    return server
