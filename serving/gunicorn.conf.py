"""gunicorn settings for the gateway:

    gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

Binds to $PORT on all interfaces if set (gunicorn's own rule), else 127.0.0.1:8000; `--bind` and
GUNICORN_CMD_ARGS override anything here. Names starting with _ are not gunicorn settings.
"""
import os as _os
import shutil as _shutil
import tempfile as _tempfile

# TensorFlow's C++ log at FATAL only, as the Makefile sets it for `make serve`: without a GPU, TensorFlow logs
# "failed call to cuInit" (E0000) at its first tensor. Set in the master, so every worker has it before it imports
# TensorFlow; a value in the environment wins. Python's exceptions and the gateway's own log are unaffected.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Threads, not processes, hold the streams: a stream is a thread waiting on the batcher, and one worker
# batches all of its streams into one model call. More workers multiply memory (a model copy each) and split
# the batch; on a small machine one worker uses every core through TensorFlow's own threads.
worker_class = "gthread"
workers = int(_os.environ.get("WEB_CONCURRENCY", "1"))
# One thread per admitted stream (CHARLM_MAX_STREAMS) plus headroom for probes, metrics and short calls.
threads = int(_os.environ.get("CHARLM_MAX_STREAMS", "64")) + 16

# gthread's main loop heartbeats whatever its threads are doing, so a long stream never makes a worker look
# silent; this timeout bounds the worker's start (loading the model) and a wedged main loop.
timeout = 120
# On SIGTERM/HUP, streams in flight get this long to finish (the longest allowed stream takes seconds).
graceful_timeout = 30
keepalive = 5
# Never load the app in the master: TensorFlow's thread pools and gRPC channels do not survive a fork.
# Each worker calls create_app() itself, after the fork.
preload_app = False
# gunicorn's runtime control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): two gateways
# on one machine (tests, a benchmark, `make serve`) would take it from each other, and a read-only root has no
# $HOME to write. Nothing here uses gunicornc.
control_socket_disable = True
if _os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # heartbeat file on tmpfs: no disk stalls, works on a read-only root

# prometheus-client's multiprocess mode: workers write their values to files in this directory and /metrics
# adds them up, so a scrape sees all workers whichever one answers. Set here, in the master, before any worker
# exists, so every worker inherits it.
_created_metrics_dir = None
if not _os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _created_metrics_dir = _tempfile.mkdtemp(prefix="charlm-prometheus-")
    _os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir


def on_starting(server):
    # Values from a previous run would be added to this one's.
    directory = _os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in _os.listdir(directory):
        _os.remove(_os.path.join(directory, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # a dead worker's live gauges (active streams) stop counting


def on_exit(server):
    if _created_metrics_dir:
        _shutil.rmtree(_created_metrics_dir, ignore_errors=True)
