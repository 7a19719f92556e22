"""Continuous batching: one thread per worker advances every active stream by a chunk with one backend
`generate` call, carrying each stream's state between calls. A stream submitted while a call runs joins
the next one; a stream whose client went away is dropped before the next one.

Chunk sizes: a stream's first call generates `first_chunk` characters and each later call doubles that up to
`max_chunk`. A call takes as long as its longest row, so the whole call uses the smallest chunk any of its rows
wants: a newcomer's first characters are not held behind other streams' long chunks. Prompts are fed
`prompt_chunk` characters per call for the same reason. Sampling is keyed by (seed, position in the state),
so none of this changes a seeded stream's text.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from flask import Flask, current_app

from model_interface import signatures as sig
from model_interface.errors import InputRejected, ModelInterfaceError, ModelUnavailable
from model_interface.signatures import SamplingSettings
from serving.errors import TooManyStreams

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
    cancelled: bool = False  # set by the request's thread; read before every call
    generating_calls: int = 0
    admitted_at: float | None = None  # set by submit, cleared at its first call (the queue time metric)


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
        self._cond = threading.Condition()
        self._pending: list[Stream] = []
        self._active: list[Stream] = []
        self._thread: threading.Thread | None = None

    def submit(self, streams: list[Stream]) -> None:
        with self._cond:
            if self._count() + len(streams) > self.settings.max_streams:
                raise TooManyStreams(f"{self._count()} streams are running; this worker takes at most "
                                     f"{self.settings.max_streams}", self.settings.retry_after_s)
            admitted = time.perf_counter()
            for stream in streams:
                stream.admitted_at = admitted
            self._pending.extend(streams)
            if self._thread is None:  # started on first use: in a gunicorn worker that is after the fork
                self._thread = threading.Thread(target=self._run, name="charlm-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
            self._update_gauges(0)

    def count(self) -> int:
        """Streams admitted and not yet finished or dropped."""
        with self._cond:
            return self._count()

    def _count(self) -> int:
        return len(self._pending) + len(self._active)

    def _update_gauges(self, in_call: int) -> None:
        self.metrics.active_streams.set(self._count())
        self.metrics.queue_depth.set(self._count() - in_call)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._active:
                    self._cond.wait()
                self._active.extend(self._pending)
                self._pending.clear()
                live = [s for s in self._active if not s.cancelled]
                if len(live) < len(self._active):
                    self.metrics.cancelled.inc(len(self._active) - len(live))
                self._active = live
                # One version per call; rows over max_batch, or of another version, go in the next call.
                rows = [s for s in live if s.version == live[0].version][: self.settings.max_batch] if live else []
                self._update_gauges(len(rows))
            if not rows:
                continue
            self._end_queue_time(rows)
            try:
                finished = self._advance(rows)
            except Exception as e:  # a bug must fail these streams, not kill the thread every stream relies on
                log.exception("batcher step failed")
                error = ModelUnavailable(f"internal error while generating: {type(e).__name__}")
                for stream in rows:
                    stream.sink.put(Failed(stream.index, error))
                finished = set(rows)
            with self._cond:
                # Rows just advanced go to the back: fair turns when there are more rows than one call takes.
                kept = [s for s in self._active if s not in finished]
                self._active = [s for s in kept if s not in rows] + [s for s in kept if s in rows]
                self._update_gauges(0)

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
        chunk = min(self._chunk(s) for s in rows)
        pieces = [s.prompt[: self.settings.prompt_chunk] for s in rows]
        rests = [s.prompt[self.settings.prompt_chunk:] for s in rows]
        num_chars = [0 if rest else min(chunk, s.remaining) for s, rest in zip(rows, rests)]
        # Always the full width, zeros for a fresh start: TF Serving's batching stacks calls from many
        # gateways and fails a batch whose inputs differ beyond the batch dimension ([n, 0] next to [m, width]).
        states = sig.fresh_states(len(rows), rows[0].state_size)
        for row, stream in zip(states, rows):
            if stream.state is not None:
                row[:] = stream.state
        inputs = sig.generate_inputs(pieces, states, num_chars, [s.sampling for s in rows])
        started = time.perf_counter()
        try:
            outputs = self.backend.call(sig.GENERATE, rows[0].version, inputs, sig.OUTPUTS[sig.GENERATE])
        except ModelInterfaceError as e:
            for stream in rows:
                stream.sink.put(Failed(stream.index, e))
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
                stream.sink.put(Failed(stream.index, InputRejected(problem)))
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
                stream.sink.put(Done(stream.index, stream.state))
                finished.add(stream)
        self.metrics.chars.inc(generated)
        return finished


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
