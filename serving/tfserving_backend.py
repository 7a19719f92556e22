"""The `tfserving` backend: TensorFlow Serving's PredictionService over gRPC, through the model interface's
`TFServingGrpc` transport (a deadline on every call, the channel opened on first use, so in a gunicorn worker
after the fork, and gRPC's reconnect backoff capped low, so a restarted server is found again within seconds).

The gateway carries the state; TF Serving only runs the exported signatures, as pure functions. Every call
names the version it is for, so a stream's calls all go to the version it started on.
"""
from __future__ import annotations

import logging

from model_interface import signatures as sig
from model_interface.client import TFSERVING_GRPC_ADDRESS, ModelClient, TFServingGrpc
from serving.backend import Backend, ServedModel

log = logging.getLogger(__name__)


class TFServingBackend(Backend):
    kind = "tfserving"

    def __init__(self, settings):
        super().__init__(settings)
        self.transport = TFServingGrpc(settings.tfserving_address or TFSERVING_GRPC_ADDRESS, self.name,
                                       deadline_s=settings.tfserving_timeout_s,
                                       version_label=settings.tfserving_version_label)

    def client(self, version: int) -> ModelClient:
        return ModelClient(self.transport, version)

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
