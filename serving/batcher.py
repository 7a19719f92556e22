"""Continuous batching: one thread per worker advances every active stream by a chunk with one backend
`generate` call, carrying each stream's state between calls. A stream submitted while a call runs joins
the next one; a stream whose client went away is dropped before the next one.

Chunk sizes: a stream's first call generates `first_chunk` characters and each later call doubles that up to
`max_chunk`. A call takes as long as its longest row, so the whole call uses the smallest chunk any of its rows
wants: a newcomer's first characters are not held behind other streams' long chunks; only when the call spends
steps on a prompt piece anyway do its rows generate as many (up to `max_chunk`). Prompts are fed
`prompt_chunk` characters per call for the same reason. Sampling is keyed by (seed, position in the state),
so none of this changes a seeded stream's text.

Admission: a worker runs at most `max_streams` streams. A request that finds too few slots waits in a queue, first
come first served, of at most `max_queued` requests, for at most `max_queue_wait_s` (a Condition: woken when a slot
frees, never polling; a request given a way to see its client gone looks every `disconnect_check_s`), then is
refused (TooManyStreams); a full queue refuses at once (AdmissionQueueFull). A slot is freed the moment its
stream ends or is cancelled (its client went away, a stop string), not at the batcher's next call, so a waiter is
admitted at once; a cancelled stream still in the call in flight is dropped before the next one.

Shutdown (`shutdown`, from gunicorn's SIGTERM: serving/gunicorn.conf.py): nothing new is admitted and the queue is
emptied (ShuttingDown); streams running then go on, and those still running after the grace period end with a
ShuttingDown failure, which a streamed reply sends as its error event, before gunicorn's graceful_timeout kills
the worker.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from flask import Flask, current_app

from model_interface import signatures as sig
from model_interface.errors import InputRejected, ModelInterfaceError, ModelUnavailable
from model_interface.signatures import SamplingSettings
from serving.errors import AdmissionQueueFull, ClientGone, ShuttingDown, TooManyStreams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    index: int  # the choice it feeds, within its request
    prompt: str  # still to be consumed
    state: np.ndarray | None  # float32 [state_size]; None = a fresh start
    remaining: int  # characters still to generate
    sampling: SamplingSettings
    version: int  # the model version its state belongs to
    state_size: int  # that version's state width
    sink: queue.SimpleQueue = field(repr=False)
    generating_calls: int = 0
    admitted_at: float | None = None  # set by submit, cleared at its first call (the queue time metric)
    _cancelled: bool = field(default=False, init=False, repr=False)
    _batcher: "Batcher | None" = field(default=None, init=False, repr=False)  # the one that admitted it
    _holds_slot: bool = field(default=False, init=False, repr=False)  # admitted, not yet finished or cancelled

    @property
    def cancelled(self) -> bool:
        """Set (by the request's thread, the disconnect watcher, a stop string) when nobody wants the rest: its
        slot frees at once, and the batcher drops it before its next call. Never unset."""
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        if not value or self._cancelled:
            return
        self._cancelled = True
        if self._batcher is not None:
            self._batcher._release(self, cancelled=True)


@dataclass
class Chunk:
    """Characters of one stream, with what `generate` says of each (from the model's own distribution, before
    temperature and the filters): its log-probability, and the row's `logprobs` likeliest characters (vocabulary
    ids, -1 past those there are) with theirs, when it asked for any."""

    index: int
    text: str
    log_probs: np.ndarray | None = None  # float32 [chars]
    top_ids: np.ndarray | None = None  # int32 [chars, logprobs]
    top_log_probs: np.ndarray | None = None  # float32 [chars, logprobs]


@dataclass
class Done:
    index: int
    state: np.ndarray


@dataclass
class Failed:
    index: int
    error: Exception  # a typed failure (model_interface.errors, serving.errors' APIError): the request raises it


class Batcher:
    def __init__(self, backend, settings, metrics):
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # the batching thread's: streams were admitted
        self._room = threading.Condition(self._lock)  # the waiting requests': a slot freed, the queue moved, shutdown
        self._pending: list[Stream] = []
        self._active: list[Stream] = []
        self._in_call: list[Stream] = []  # the rows of the backend call in flight
        self._held = 0  # slots held: streams admitted and neither finished nor cancelled
        self._waiting: deque[object] = deque()  # one ticket per waiting request, in arrival order
        self._draining = False
        self._deadline: float | None = None  # when shutdown ends the streams still running (perf_counter)
        self._thread: threading.Thread | None = None

    def submit(self, streams: list[Stream], gone: Callable[[], bool] | None = None) -> None:
        """Admit `streams` (one request's) now, or once slots free for them all: first come first served, waiting
        at most max_queue_wait_s in a queue of at most max_queued requests. Raises TooManyStreams (the wait
        ran out, or there is no queue), AdmissionQueueFull (at once), ShuttingDown, or ClientGone when `gone()`
        (looked at every disconnect_check_s) says the client left while it waited."""
        settings, need = self.settings, len(streams)
        started = time.perf_counter()
        with self._lock:
            if self._draining:
                self._observe_wait("shutdown", started)
                raise self._shutting_down("admits no new requests")
            if need > settings.max_streams:  # (the routes refuse these with a 400 first)
                raise TooManyStreams(f"{need} streams are more than this worker takes ({settings.max_streams})",
                                     settings.retry_after_s)
            if not self._waiting and self._held + need <= settings.max_streams:
                self._admit(streams)
                self._observe_wait("admitted", started)
                return
            if not settings.max_queued or not settings.max_queue_wait_s:
                self._observe_wait("queue_full", started)
                raise TooManyStreams(f"{self._held} streams are running; this worker takes at most "
                                     f"{settings.max_streams}", settings.retry_after_s)
            if len(self._waiting) >= settings.max_queued:
                self._observe_wait("queue_full", started)
                raise AdmissionQueueFull(f"{self._held} streams are running and {len(self._waiting)} requests are "
                                         f"waiting, as many as this worker queues", settings.retry_after_s)
            ticket = object()
            self._waiting.append(ticket)
            self.metrics.admission_queue_depth.set(len(self._waiting))
            outcome = "timeout"
            try:
                deadline = started + settings.max_queue_wait_s
                while True:
                    if self._draining:
                        outcome = "shutdown"
                        raise self._shutting_down("admits no new requests")
                    if self._waiting[0] is ticket and self._held + need <= settings.max_streams:
                        self._admit(streams)
                        outcome = "admitted"
                        return
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        raise TooManyStreams(f"{self._held} streams are running (at most {settings.max_streams}) "
                                             f"and no slot freed for {settings.max_queue_wait_s:g} s",
                                             settings.retry_after_s)
                    if gone is not None:
                        if gone():
                            outcome = "gone"
                            raise ClientGone("the client left while its request waited for stream slots")
                        left = min(left, settings.disconnect_check_s)
                    self._room.wait(left)
            finally:
                self._waiting.remove(ticket)
                self._room.notify_all()  # the next in line may be at the head now
                self.metrics.admission_queue_depth.set(len(self._waiting))
                self._observe_wait(outcome, started)

    def _observe_wait(self, outcome: str, started: float) -> None:
        self.metrics.admission_wait.labels(outcome).observe(time.perf_counter() - started)

    def _admit(self, streams: list[Stream]) -> None:
        admitted = time.perf_counter()
        for stream in streams:
            stream.admitted_at = admitted
            stream._batcher, stream._holds_slot = self, True
        self._held += len(streams)
        self._pending.extend(streams)
        if self._thread is None:  # started on first use: in a gunicorn worker that is after the fork
            self._thread = threading.Thread(target=self._run, name="charlm-batcher", daemon=True)
            self._thread.start()
        self._cond.notify()
        self._update_gauges()

    def _release(self, stream: Stream, cancelled: bool = False) -> None:
        """`stream` no longer holds its slot (it finished, failed or was cancelled): a waiting request may take it."""
        with self._lock:
            if not stream._holds_slot:
                return
            stream._holds_slot = False
            self._held -= 1
            if cancelled:
                self.metrics.cancelled.inc()
            self._update_gauges()
            self._room.notify_all()

    def count(self) -> int:
        """Streams admitted and not yet finished or cancelled: the slots taken."""
        with self._lock:
            return self._held

    def waiting(self) -> int:
        """Requests waiting for slots."""
        with self._lock:
            return len(self._waiting)

    @property
    def draining(self) -> bool:
        """Shutting down: no new request is admitted."""
        return self._draining

    def _update_gauges(self) -> None:
        self.metrics.active_streams.set(self._held)
        self.metrics.queue_depth.set(self._held - sum(1 for s in self._in_call if s._holds_slot))

    def shutdown(self, grace_s: float) -> None:
        """Stop admitting (waiting requests are refused now), and end the streams still running after `grace_s`
        with a ShuttingDown failure. Called again with a shorter grace (gunicorn's quick shutdown after a
        SIGTERM), the earlier deadline holds."""
        with self._lock:
            deadline = time.perf_counter() + max(grace_s, 0)
            first = not self._draining
            self._draining = True
            self._room.notify_all()
            if self._deadline is not None and self._deadline <= deadline:
                return
            self._deadline = deadline
            running = self._held
        if first:
            log.info("shutting down: %d streams running get %.1f s to finish, then end with an error event",
                     running, grace_s)
        timer = threading.Timer(max(grace_s, 0), self._end_running)
        timer.daemon = True
        timer.name = "charlm-shutdown"
        timer.start()

    def _end_running(self) -> None:
        """The grace period is over: every stream still running fails with ShuttingDown (its request's thread
        wakes on it at once, whatever the batching thread is doing); the batcher drops them before its next call."""
        with self._lock:
            ending = [s for s in self._pending + self._active if s._holds_slot]
            error = self._shutting_down("ended this stream: it ran past the shutdown grace period "
                                        f"(CHARLM_SHUTDOWN_GRACE_S)") if ending else None
            for stream in ending:
                stream._cancelled = True  # dropped before the next call (not counted as a client gone)
                self._end(stream, Failed(stream.index, error))
        if ending:
            log.warning("shutting down: ended %d streams still running", len(ending))

    def _shutting_down(self, what: str) -> ShuttingDown:
        return ShuttingDown(f"the server is shutting down and {what}; retry", self.settings.retry_after_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._active:
                    self._cond.wait()
                self._active.extend(self._pending)
                self._pending.clear()
                live = [s for s in self._active if not s.cancelled]
                for stream in self._active:
                    if stream.cancelled:
                        self._release(stream, cancelled=True)  # (freed when cancelled already: only in case)
                self._active = live
                # One version per call; rows over max_batch, or of another version, go in the next call.
                rows = [s for s in live if s.version == live[0].version][: self.settings.max_batch] if live else []
                self._in_call = rows
                self._update_gauges()
            if not rows:
                continue
            self._end_queue_time(rows)
            try:
                finished = self._advance(rows)
            except Exception as e:  # a bug must fail these streams, not kill the thread every stream relies on
                log.exception("batcher step failed")
                error = ModelUnavailable(f"internal error while generating: {type(e).__name__}")
                for stream in rows:
                    self._end(stream, Failed(stream.index, error))
                finished = set(rows)
            with self._cond:
                # Rows just advanced go to the back: fair turns when there are more rows than one call takes.
                kept = [s for s in self._active if s not in finished]
                self._active = [s for s in kept if s not in rows] + [s for s in kept if s in rows]
                self._in_call = []
                self._update_gauges()

    def _end(self, stream: Stream, event: "Done | Failed") -> None:
        """A stream's last event. Its slot frees first: the request that reads the event, and cancels its streams as
        it ends, must not find it still held (that would count as a client gone)."""
        self._release(stream)
        stream.sink.put(event)

    def _end_queue_time(self, rows: list[Stream]) -> None:
        """A stream's queue time: from its admission to the start of its first backend call."""
        now = time.perf_counter()
        for stream in rows:
            if stream.admitted_at is not None:
                self.metrics.queue_time.observe(now - stream.admitted_at)
                stream.admitted_at = None

    def _chunk(self, stream: Stream) -> int:
        return min(self.settings.max_chunk, self.settings.first_chunk << min(stream.generating_calls, 12))

    def _advance(self, rows: list[Stream]) -> set[Stream]:
        pieces = [s.prompt[: self.settings.prompt_chunk] for s in rows]
        rests = [s.prompt[self.settings.prompt_chunk:] for s in rows]
        generating = [not rest for rest in rests]  # this call reaches the end of the row's prompt
        # The graph feeds every row's prompt piece first (as many steps as the longest), then generates (as many
        # steps as the most any row asks for). The smallest chunk any generating row wants keeps a newcomer's
        # first characters from waiting behind long chunks. But when streams already running share the call with a
        # prompt piece, they would get that chunk (4) for a call of `longest_piece` + 4 steps: under steady
        # arrivals nearly every call, hence ~5 characters a stream per call. Such a call generates as many
        # characters as it feeds (up to max_chunk): at most twice its length, for many times the text.
        chunk = min((self._chunk(s) for s, g in zip(rows, generating) if g), default=0)
        newcomer = any(g and not s.generating_calls for s, g in zip(rows, generating))
        if any(g and s.generating_calls for s, g in zip(rows, generating)) and not (
                newcomer and self.settings.newcomer_first):
            chunk = max(chunk, min(self.settings.max_chunk, max(len(piece) for piece in pieces)))
        num_chars = [min(chunk, s.remaining) if g else 0 for s, g in zip(rows, generating)]
        # Alternatives (20 per character) only when a row asked for them: for TF Serving they are most of a reply.
        wanted = [name for name in sig.OUTPUTS[sig.GENERATE]
                  if name not in LOGPROB_ALTERNATIVES or any(s.sampling.logprobs for s in rows)]
        # Always the full width, zeros for a fresh start: TF Serving's batching stacks calls from many
        # gateways and fails a batch whose inputs differ beyond the batch dimension ([n, 0] next to [m, width]).
        states = sig.fresh_states(len(rows), rows[0].state_size)
        for row, stream in zip(states, rows):
            if stream.state is not None:
                row[:] = stream.state
        inputs = sig.generate_inputs(pieces, states, num_chars, [s.sampling for s in rows])
        started = time.perf_counter()
        try:
            outputs = self.backend.call(sig.GENERATE, rows[0].version, inputs, tuple(wanted))
        except ModelInterfaceError as e:
            for stream in rows:
                self._end(stream, Failed(stream.index, e))
            return set(rows)
        finally:
            self.metrics.backend_seconds.labels(sig.GENERATE).observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(rows))

        finished, generated = set(), 0
        for i, stream in enumerate(rows):
            unknown = outputs["unknown_chars"][i].decode("utf-8")
            text = outputs["text"][i].decode("utf-8")
            if unknown or len(text) != num_chars[i]:
                problem = (f"the prompt has characters outside the model's vocabulary: {list(unknown)}" if unknown
                           else f"the model generated {len(text)} characters instead of {num_chars[i]}")
                self._end(stream, Failed(stream.index, InputRejected(problem)))
                finished.add(stream)
                continue
            stream.state = outputs["state"][i].copy()
            stream.prompt = rests[i]
            stream.remaining -= len(text)
            generated += len(text)
            if num_chars[i]:
                stream.generating_calls += 1
            if text and not stream.cancelled:
                stream.sink.put(chunk_of(outputs, i, stream, text))
            if not stream.prompt and stream.remaining <= 0:
                self._end(stream, Done(stream.index, stream.state))
                finished.add(stream)
        self.metrics.chars.inc(generated)
        return finished


LOGPROB_ALTERNATIVES = ("top_ids", "top_log_probs")  # generate's outputs read only for a row's `logprobs`


def chunk_of(outputs: dict[str, np.ndarray], row: int, stream: Stream, text: str) -> Chunk:
    """Row `row`'s characters of a `generate` call as a Chunk: its first len(text) log-probabilities (the rest of
    the row is padding up to the call's longest), and its alternatives if it asked for them."""
    n, wanted = len(text), stream.sampling.logprobs
    log_probs = outputs["log_probs"][row, :n].copy() if "log_probs" in outputs else None
    if not wanted or "top_ids" not in outputs:
        return Chunk(stream.index, text, log_probs)
    return Chunk(stream.index, text, log_probs, outputs["top_ids"][row, :n, :wanted].copy(),
                 outputs["top_log_probs"][row, :n, :wanted].copy())


def init_app(app: Flask, settings) -> None:
    app.extensions["charlm.batcher"] = Batcher(app.extensions["charlm.backend"], settings,
                                               app.extensions["charlm.metrics"])


def current_batcher() -> Batcher:
    return current_app.extensions["charlm.batcher"]


def begin_shutdown(app, longest_s: float) -> None:
    """Drain `app`'s batcher (gunicorn.conf.py's hooks call this on SIGTERM and SIGINT/SIGQUIT): running streams
    get CHARLM_SHUTDOWN_GRACE_S, at most `longest_s`. Safe in a signal handler: the work is done in a new thread,
    so the interrupted thread's locks are never wanted."""
    extensions = getattr(app, "extensions", None) or {}
    batcher = extensions.get("charlm.batcher")
    if batcher is None:
        log.warning("shutting down: no batcher found on %r", app)
        return
    grace = max(min(batcher.settings.shutdown_grace_s, longest_s), 0)
    threading.Thread(target=batcher.shutdown, args=(grace,), name="charlm-drain", daemon=True).start()
