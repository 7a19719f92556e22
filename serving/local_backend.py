"""The `local` backend: the newest complete SavedModel version under CHARLM_MODEL_DIR, loaded in this
process with tf.saved_model.load (no Keras, no training code). A newer version is loaded beside the served
one and swapped in; the previous one stays loaded so streams pinned to it can finish."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from serving.backends import (Backend, BackendRejected, BackendUnavailable, ModelInfo, VersionGone,
                              rejection_message)

log = logging.getLogger(__name__)

KEEP_VERSIONS = 2  # the served version and the one before it, for the streams that started on it


def complete_versions(model_dir: Path) -> list[int]:
    """Integer-named versions with a saved_model.pb: export renames a version into place whole, so a
    version directory with its graph file is complete (TF Serving applies the same rule)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file())


def run_signature(loaded, signature: str, inputs: dict[str, np.ndarray],
                  outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        function = loaded.signatures[signature]
    except KeyError:
        raise BackendRejected(f"the model has no {signature!r} signature") from None
    try:
        result = function(**{name: tf.constant(value) for name, value in inputs.items()})
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
        raise BackendRejected(rejection_message(getattr(e, "message", None) or str(e))) from None
    return {name: value.numpy() for name, value in result.items() if outputs is None or name in outputs}


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.model_dir = Path(settings.model_dir)
        self._loaded: dict[int, object] = {}
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
                loaded = self._load(version)
                with self._lock:
                    self._loaded[version] = loaded
                info = ModelInfo.describe(self, version)
            except Exception as e:
                with self._lock:
                    self._loaded.pop(version, None)
                self._failed.add(version)
                log.error("cannot load %s: %s", self.model_dir / str(version), e)
                continue
            with self._lock:
                for old in sorted(self._loaded)[:-KEEP_VERSIONS]:
                    del self._loaded[old]
                self._model = info
            log.info("serving %s version %d from %s", self.name, version, self.model_dir)
            return
        if self._model is None:
            raise BackendUnavailable(f"no loadable model version in {self.model_dir}")

    def _load(self, version: int):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(self.model_dir / str(version)))
        # The first call of a signature pays for graph optimisation; pay it here, not in a user's request.
        run_signature(loaded, "generate", {
            "prompt": np.array([""], object), "state": np.zeros([1, 0], np.float32),
            "num_chars": np.array([2], np.int32), "temperature": np.ones([1], np.float32),
            "top_k": np.zeros([1], np.int32), "top_p": np.ones([1], np.float32), "seed": np.zeros([1], np.int64)})
        return loaded

    def call(self, signature, version, inputs, outputs=None):
        with self._lock:
            version = version if version is not None else self.model().version
            loaded = self._loaded.get(version)
        if loaded is None:
            raise VersionGone(f"{self.name} version {version} is no longer loaded; start again")
        return run_signature(loaded, signature, inputs, outputs)
