"""The `tfserving` backend: TensorFlow Serving's PredictionService over gRPC, through the model interface's
`TFServingGrpc` transport (a deadline on every call, the channel opened on first use, so in a gunicorn worker
after the fork, and gRPC's reconnect backoff capped low, so a restarted server is found again within seconds).

The gateway carries the state; TF Serving only runs the exported signatures, as pure functions. Every call
names the version it is for, so a stream's calls all go to the version it started on.

A `generate` call past its deadline is sent once more, whole, with a deadline of its own, before it fails. Such a
call carries a row for every stream of the batch (serving/batcher.py), and a failure fails every one of them; the
usual cause of a late call is a moment's stall (a replica busy, paused or gone quiet; the retry may go to another
one) rather than its rows, none of which can make a call much longer than another does (prompts are fed in
pieces of CHARLM_PROMPT_CHUNK, and no row generates more than the call's chunk). Running it again is safe: Predict is a pure function of its inputs, the states travel in
the request and the gateway takes one answer. Only if the second one is late as well do the call's streams fail,
with DeadlineExceeded (a 504 `backend_timeout`, or an error event for a stream already sending). The other
signatures serve one request each, whose own 504 it is: they are not sent twice.

A call for the served version that TF Serving no longer has (it unloaded it for a newer one, its default policy)
sets off a look for the version it serves now, so new requests go there at once, not at the next poll.
"""
from __future__ import annotations

import logging

from model_interface import signatures as sig
from model_interface.client import TFSERVING_GRPC_ADDRESS, ModelClient, TFServingGrpc
from model_interface.errors import DeadlineExceeded, VersionNotFound
from serving.backend import Backend, ServedModel

log = logging.getLogger(__name__)


class TFServingBackend(Backend):
    kind = "tfserving"

    def __init__(self, settings):
        super().__init__(settings)
        self.transport = TFServingGrpc(settings.tfserving_address or TFSERVING_GRPC_ADDRESS, self.name,
                                       deadline_s=settings.tfserving_timeout_s,
                                       version_label=settings.tfserving_version_label)
        self.late_calls_retried = 0  # generate calls sent again after their deadline (see the module's docstring)

    def client(self, version: int) -> ModelClient:
        return ModelClient(self.transport, version)

    def call(self, signature, version, inputs, outputs=None):
        try:
            try:
                return super().call(signature, version, inputs, outputs)
            except DeadlineExceeded as e:
                if signature != sig.GENERATE:
                    raise
                rows = len(next(iter(inputs.values()), ()))
                log.warning("%s; sending the %s call of %d row(s) once more", e, signature, rows)
                self.late_calls_retried += 1
            try:
                return super().call(signature, version, inputs, outputs)
            except DeadlineExceeded as e:
                raise DeadlineExceeded(f"{e}, twice: the call was sent again and was late again") from None
        except VersionNotFound:
            if self._model is not None and version == self._model.version:
                self.refresh_soon()  # TF Serving unloaded the served version: find the one it serves instead
            raise

    def refresh(self) -> None:
        # No version number in the request: TF Serving answers with the newest it serves (or the labelled one),
        # and says which; the streams that start from now on are pinned to that number.
        _, version = self.transport.predict(sig.METADATA, sig.metadata_inputs())
        if self._model is None or version != self._model.version:
            self._model = ServedModel(self.name, version, self.client(version).metadata)
            log.info("%s serves version %d", self.transport.description, version)

    def versions(self) -> list[int]:
        return [self.model().version]

    def check(self) -> ServedModel:
        if self._model is None:
            self.refresh()
        return super().check()

    def close(self) -> None:
        self.transport.close()
