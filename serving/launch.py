"""Starting local servers on 127.0.0.1 for tests and benchmarks: free ports, and the gateway under gunicorn as
a child process. Production runs gunicorn directly (`make serve`, the gateway image)."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "serving/gunicorn.conf.py"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that were free a moment ago (all held open together while picked,
    so they differ). Another process may still take one before it is bound; callers bind soon after."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class GunicornGateway:
    """`gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'` on 127.0.0.1, serving `model_dir`, as
    `make serve` runs it. A context manager: ready (GET /readyz answers 200) on entry, stopped on exit, with
    every worker.

    `env` overrides the environment (a value of None removes the variable); `log` gets gunicorn's output."""

    def __init__(self, model_dir: Path, log: Path, env: dict[str, str | None] | None = None,
                 port: int | None = None, ready_timeout_s: float = 300.0, stop_timeout_s: float = 30.0):
        self.model_dir, self.log = Path(model_dir), Path(log)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        # A fresh metrics directory per start (gunicorn.conf.py makes one when none is set): a directory shared
        # with this process or another gateway would mix their values.
        self.env = {**os.environ, "CHARLM_MODEL_DIR": str(self.model_dir), "PROMETHEUS_MULTIPROC_DIR": None,
                    **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> "GunicornGateway":
        """Start it and wait until it is ready; on failure (exit, or not ready in time) stop it and raise with
        its log."""
        env = {name: value for name, value in self.env.items() if value is not None}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", CONFIG, "--bind", f"127.0.0.1:{self.port}",
                 "serving.app:create_app()"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: the workers can be ended with it
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn not ready after {self.ready_timeout_s:g} s:\n{self.log.read_text()}")
            time.sleep(0.25)
        return self

    def ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):  # refused while binding, or no answer while the model loads
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """SIGTERM (streams in flight get gunicorn's graceful_timeout), a bounded wait, then SIGKILL to the whole
        process group, so no worker outlives its master."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group is gone already: master and workers all exited
            pass
        process.wait()

    def __enter__(self) -> "GunicornGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_gateway(model_dir: Path, log: Path, env: dict[str, str | None] | None = None,
                  port: int | None = None, **timeouts) -> GunicornGateway:
    """A ready gateway; stop() it (or use GunicornGateway as a context manager)."""
    return GunicornGateway(model_dir, log, env, port, **timeouts).start()
