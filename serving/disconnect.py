"""Seeing that the client of a non-streaming request has gone, so its rows leave the batch at the next chunk.

A streamed reply notices a vanished client by itself: the WSGI server's next write fails and it closes the
response, which cancels the streams (generation.event_stream). A plain reply writes nothing until its text is
whole, so without this a client that hung up on an 8,000-character request would keep its rows generating for
nobody, holding batch places and a thread.

How: both servers put the client's socket in the WSGI environ (werkzeug: `werkzeug.socket`, gunicorn:
`gunicorn.socket`; gthread hands the request's socket to its thread and does not poll it meanwhile). One watcher
thread per app looks at the sockets of the plain requests in flight every CHARLM_DISCONNECT_CHECK_S, without
reading from them: poll() for a hang-up (POLLHUP, POLLRDHUP, POLLERR), and for a readable socket a one-byte
MSG_PEEK, which returns b"" at end of file. The request body has been read by then, so the only bytes a live
client can have sent are a pipelined next request, which the peek leaves where it is. When a client is gone, its
streams are marked cancelled (the batcher drops them before its next call) and a `Failed` event wakes the
request's thread, which raises it: a 499 (nginx's "client closed request") that nobody reads. A TLS socket, whose
bytes cannot be peeked, counts as gone only on a poll() hang-up. Flask's test client has no socket: never gone.

Why not a keep-alive byte (a plain reply as a generator writing whitespace, which JSON allows, until the body):
the 200 would go out before the text exists, so a backend failure could no longer get its own status.
"""
from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from typing import Iterator

from flask import current_app, request

from serving.batcher import Failed
from serving.errors import APIError
from serving.generation import RequestStreams

log = logging.getLogger(__name__)

SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
HANG_UP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def client_socket(environ: dict) -> socket.socket | None:
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None and hasattr(sock, "fileno"):
            return sock
    return None


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed (or reset) the connection; False when it cannot be told."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | HANG_UP)
        ready = poller.poll(0)
    except (OSError, ValueError):  # closed on this side already (the reply is going), or not a real socket
        return False
    if not ready:
        return False
    if ready[0][1] & HANG_UP:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ValueError:  # a TLS socket takes no flags: only a hang-up tells
        return False
    except OSError:  # reset by the peer
        return True


def client_closed() -> APIError:
    return APIError(499, "the client closed the connection before the reply was complete",
                    code="client_closed_request")


class Watcher:
    """The plain requests of one app whose clients are looked at, and the thread that looks."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._watched: dict[int, tuple[socket.socket, RequestStreams]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, generation: RequestStreams, environ: dict) -> Iterator[None]:
        sock = client_socket(environ)
        if sock is None:
            yield
            return
        key = id(generation)
        with self._lock:
            self._watched[key] = (sock, generation)
            if self._thread is None:  # started on first use: in a gunicorn worker, after the fork
                self._thread = threading.Thread(target=self._run, name="charlm-disconnect", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self._lock:
                watched = list(self._watched.items())
            for key, (sock, generation) in watched:
                try:
                    gone = client_gone(sock)
                except Exception:  # never let one odd socket stop the watching of the others
                    log.exception("looking at a client's socket")
                    gone = False
                if not gone:
                    continue
                with self._lock:
                    if self._watched.pop(key, None) is None:
                        continue  # answered meanwhile
                self.stop(generation)

    @staticmethod
    def stop(generation: RequestStreams) -> None:
        """Cancel the streams at once (the batcher drops them before its next call), then wake the request's
        thread with a failure of each stream: whichever is still open, it raises."""
        for stream in generation.streams:
            stream.cancelled = True
        for stream in generation.streams:
            generation.sink.put(Failed(stream.index, client_closed()))


def watching(generation: RequestStreams):
    """Watch the current request's client while the route waits for `generation` (a plain reply)."""
    watcher = current_app.extensions.get("charlm.disconnect")
    if watcher is None:
        watcher = current_app.extensions.setdefault(
            "charlm.disconnect", Watcher(current_app.config["CHARLM"].disconnect_check_s))
    return watcher.watching(generation, request.environ)
