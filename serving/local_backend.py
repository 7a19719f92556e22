"""The `local` backend: the newest complete version under CHARLM_MODEL_DIR, loaded in this process (the model
interface's `InProcess` transport: tf.saved_model.load, no Keras, no training code, each signature run once
before serving). A newer version is loaded beside the served one and swapped in; the previous one stays loaded
so streams pinned to it can finish."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from model_interface import signatures as sig
from model_interface.client import InProcess, ModelClient
from model_interface.cpu import BF16_CPU_FLAGS, cpu_bf16_flags
from model_interface.errors import ModelUnavailable, VersionNotFound
from model_interface.versions import complete_versions
from serving.backend import Backend, ServedModel

log = logging.getLogger(__name__)

KEEP_VERSIONS = 2  # the served version and the one before it, for the streams that started on it
# TensorFlow keeps some memory for every input shape it has run (measured: RSS grows with each new batch size and
# levels off only once every size has been seen), so batched signatures run with the batch padded to a power of
# two: 7 sizes up to 64 rows instead of 64. The extra rows repeat the last one and are dropped from the outputs; a
# row's results never depend on its batch-mates (the signatures guarantee it), and at these sizes a step costs
# about the same for 33 rows as for 64 (it reads the weights once either way).
PADDED_SIGNATURES = (sig.GENERATE, sig.SCORE, sig.ACTIVATIONS)


def padded_rows(rows: int) -> int:
    return 1 << max(0, rows - 1).bit_length()


def pad_batch(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Every input (batch first) to `rows` rows, repeating its last row."""
    return {name: np.concatenate([value, np.repeat(value[-1:], rows - len(value), axis=0)]) if rows > len(value)
            else value for name, value in inputs.items()}


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.model_dir = Path(settings.model_dir)
        self._clients: dict[int, ModelClient] = {}  # one InProcess transport per loaded version
        self._failed: set[int] = set()  # versions that would not load; not retried on every poll
        self._lock = threading.Lock()

    def versions(self) -> list[int]:
        return complete_versions(self.model_dir)

    def refresh(self) -> None:
        served = self._model.version if self._model else 0
        for version in reversed(self.versions()):
            if version <= served:
                return
            if version in self._failed:
                continue
            try:
                client = ModelClient(InProcess(self.model_dir / str(version)))  # warms every signature up
                model = ServedModel(self.name, version, client.metadata)
            except Exception as e:  # whatever is wrong with a version, the served one goes on
                self._failed.add(version)
                log.error("cannot load %s: %s", self.model_dir / str(version), e)
                continue
            with self._lock:
                self._clients[version] = client
                # Dropped, not closed: a call already running on an old version finishes on it.
                for old in sorted(self._clients)[:-KEEP_VERSIONS]:
                    del self._clients[old]
                self._model = model
            log.info("serving %s version %d from %s", self.name, version, self.model_dir)
            if model.metadata.precision == "bf16" and not cpu_bf16_flags():
                log.warning("%s version %d is bf16, and this CPU has no bfloat16 units (none of %s in /proc/cpuinfo): "
                            "oneDNN emulates its bf16 products here, so it generates slower than an fp32 export of "
                            "the same run would; serve it on a CPU with AVX512-BF16 or AMX, or export fp32 for "
                            "this one", self.name, version, ", ".join(BF16_CPU_FLAGS))
            return
        if self._model is None:
            raise ModelUnavailable(f"no loadable model version in {self.model_dir}")

    def call(self, signature, version, inputs, outputs=None):
        rows = len(next(iter(inputs.values())))
        if signature not in PADDED_SIGNATURES or padded_rows(rows) == rows:
            return super().call(signature, version, inputs, outputs)
        result = super().call(signature, version, pad_batch(inputs, padded_rows(rows)), outputs)
        return {name: value[:rows] for name, value in result.items()}

    def client(self, version: int) -> ModelClient:
        with self._lock:
            client = self._clients.get(version)
        if client is None:
            raise VersionNotFound(f"{self.name} version {version} is no longer loaded; start again")
        return client
