"""gunicorn settings for the gateway:

    gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

Binds to $PORT on all interfaces if set (gunicorn's own rule), else 127.0.0.1:8000; `--bind` and
GUNICORN_CMD_ARGS override anything here. Names starting with _ are not gunicorn settings.
"""
import logging as _logging
import os as _os
import secrets as _secrets
import shutil as _shutil
import tempfile as _tempfile

# TensorFlow's C++ log at FATAL only, as the Makefile sets it for `make serve`: without a GPU, TensorFlow logs
# "failed call to cuInit" (E0000) at its first tensor. Set in the master, so every worker has it before it imports
# TensorFlow; a value in the environment wins. Python's exceptions and the gateway's own log are unaffected.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# With the local backend, two malloc arenas, set in the master so every worker it forks has them; MALLOC_ARENA_MAX
# (glibc's own setting) in the environment wins. glibc makes arenas for threads that allocate at once, up to 8 per
# core: a worker's ~150 threads, each converting tensors in and out of TensorFlow, fragment them, and the local
# worker's memory kept growing after warm-up (`make soak`: 4.1 MiB per 1,000 requests in the second half by
# default, 1.4-2.5 in three runs with two). A tfserving worker runs no model, and two arenas made its memory grow
# instead (2.9 and 4.5, against -2.4 to 2.7 in three runs with the default; docs/results.md): it keeps glibc's
# default. Nothing to do where the C library is not glibc.
_M_ARENA_MAX = -8  # glibc's malloc.h
_MALLOC_ARENAS = 2


def _limit_malloc_arenas(arenas=_MALLOC_ARENAS):
    import ctypes

    if "MALLOC_ARENA_MAX" in _os.environ or _os.environ.get("CHARLM_BACKEND", "local") != "local":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


_limit_malloc_arenas()


# A request gunicorn cannot parse (a broken request line or header, too many or too long headers) never reaches
# the app: gunicorn answers it itself with an HTML page (gunicorn.util.write_error, which its workers call by that
# name). Answered instead in OpenAI's error envelope, like every other refusal, with gunicorn's own status and text.
def _write_json_error(sock, status_int, reason, mesg):
    import json

    from gunicorn.util import write_nonblock

    body = json.dumps({"error": {"message": f"{reason}: {mesg}" if mesg else reason,
                                 "type": "invalid_request_error" if status_int < 500 else "server_error",
                                 "param": None, "code": reason.lower().replace(" ", "_")}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    write_nonblock(sock, head + body)


import gunicorn.util as _gunicorn_util  # noqa: E402

_gunicorn_util.write_error = _write_json_error

# Threads, not processes, hold the streams: a stream is a thread waiting on the batcher, and one worker
# batches all of its streams into one model call. More workers multiply memory (a model copy each) and split
# the batch; on a small machine one worker uses every core through TensorFlow's own threads.
worker_class = "gthread"
workers = int(_os.environ.get("WEB_CONCURRENCY", "1"))
# A thread per admitted stream (CHARLM_MAX_STREAMS) and per request waiting in the admission queue
# (CHARLM_MAX_QUEUED; serving/settings.py has both defaults), plus 8 for probes, metrics and short calls. Past them
# gthread would queue connections unseen, behind the gateway's own queue and its answers.
threads = int(_os.environ.get("CHARLM_MAX_STREAMS", "64")) + int(_os.environ.get("CHARLM_MAX_QUEUED", "8")) + 8

# gthread's main loop heartbeats whatever its threads are doing, so a long stream never makes a worker look
# silent; this timeout bounds the worker's start (loading the model) and a wedged main loop.
timeout = 120
# On SIGTERM the master closes its listening socket and tells each worker; a gthread worker stops accepting and
# waits up to this long for its connections to end (kept-alive idle ones linger 2 s at most), then exits; the
# master SIGKILLs any worker still there at this timeout. The gateway ends its streams before that (post_worker_init).
graceful_timeout = 30
# Streams still running CHARLM_SHUTDOWN_GRACE_S after SIGTERM end with an error event; at most this much earlier
# than graceful_timeout, so their connections close and the worker exits before the master's SIGKILL.
_SHUTDOWN_MARGIN_S = 5
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


# Continuation states are signed (serving/state_token.py). Unset, every worker would sign with a random secret of its
# own and refuse the states of its siblings (WEB_CONCURRENCY > 1); one made here, in the master, is every worker's.
# States still die with the process and differ between replicas: set CHARLM_STATE_SECRETS (docs/deploy.md).
_made_state_secret = not _os.environ.get("CHARLM_STATE_SECRETS")
if _made_state_secret:
    _os.environ["CHARLM_STATE_SECRETS"] = _secrets.token_urlsafe(32)


def on_starting(server):
    if _made_state_secret:
        _logging.getLogger("gunicorn.error").warning(
            "CHARLM_STATE_SECRETS is not set: continuation states are signed with a secret made for this run; they "
            "will not survive a restart or verify on another replica")
    # Values from a previous run would be added to this one's.
    directory = _os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in _os.listdir(directory):
        _os.remove(_os.path.join(directory, name))


def post_worker_init(worker):
    """gthread's SIGTERM handler (ThreadWorker.handle_exit) only clears worker.alive and wakes its loop, which then
    stops accepting and waits graceful_timeout for the requests in flight: no hook runs in the worker. Chain ours
    after it, so the gateway drains: it admits nothing new and ends streams that would outlast the wait with an
    error event instead of having them cut by the kill."""
    import signal

    from serving.batcher import begin_shutdown

    app, longest = worker.wsgi, max(worker.cfg.graceful_timeout - _SHUTDOWN_MARGIN_S, 0)
    gunicorns = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        if callable(gunicorns):
            gunicorns(signum, frame)
        begin_shutdown(app, longest)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_int(worker):
    # SIGINT/SIGQUIT: gunicorn's quick shutdown (the worker exits 0.1 s after this, the master kills it 2 s later).
    # Streams end with an error event now rather than being cut.
    from serving.batcher import begin_shutdown

    begin_shutdown(getattr(worker, "wsgi", None), 0)  # (None while the worker still loads the app)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # a dead worker's live gauges (active streams) stop counting


def on_exit(server):
    if _created_metrics_dir:
        _shutil.rmtree(_created_metrics_dir, ignore_errors=True)
