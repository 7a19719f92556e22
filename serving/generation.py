"""What the generating routes share: submitting a request's streams to the batcher, reading their events
(recording time to first character, inter-character latency and the request's record: prompt and generated
characters, finish reasons, end-to-end latency), stop strings, server-sent events (with keep-alive comments)."""
from __future__ import annotations

import json
import logging
import queue
import secrets
import time
from typing import Callable, Iterator, Sequence

import numpy as np
from flask import Response, g, has_request_context, request

from model_interface.signatures import SamplingSettings
from serving.backend import ServedModel
from serving.batcher import Batcher, Chunk, Done, Failed, Stream
from serving.errors import GenerationStalled, as_api_error, bad_request, internal_error

log = logging.getLogger(__name__)


def random_seed() -> int:
    return secrets.randbits(63)


def check_vocabulary(model: ServedModel, text: str, param: str) -> None:
    unknown = model.unknown_chars(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
        raise bad_request(f"{param} has characters outside the model's vocabulary: {shown}", param,
                          code="unknown_characters")


def client_gone_check() -> Callable[[], bool] | None:
    """How a request waiting for admission sees its client leave: a look at the client's socket
    (serving/disconnect.py's, which reads nothing from it), when the WSGI server gives one; None otherwise."""
    if not has_request_context():
        return None
    from serving import disconnect  # here, not at the top: disconnect imports this module

    sock = disconnect.client_socket(request.environ)
    if sock is None:
        return None
    return lambda: disconnect.client_gone(sock)


class RequestStreams:
    """The streams of one HTTP request and the events they send back, in arrival order."""

    def __init__(self, streams: list[Stream], sink: queue.SimpleQueue, endpoint: str, settings, metrics):
        self.streams, self.sink = streams, sink
        self.endpoint, self.settings, self.metrics = endpoint, settings, metrics
        self.open = {s.index for s in streams}
        self.started = getattr(g, "started", time.perf_counter())
        self.first_char_at: float | None = None
        self.last_chunk_at: dict[int, float] = {}
        self.record = metrics.record_request(endpoint, self.started)  # the vLLM-manner numbers (serving/metrics.py)
        self._ready = None  # an event taken from the sink by ready_within(), not yet yielded
        self._first_held = False  # events() holds the first event until the route takes it
        self._last_event_at = time.perf_counter()

    @classmethod
    def submit(cls, batcher: Batcher, model: ServedModel, prompts: Sequence[str], max_chars: int,
               sampling: Sequence[SamplingSettings], endpoint: str, settings, metrics,
               states: Sequence[np.ndarray | None] | None = None) -> "RequestStreams":
        """Stream i consumes prompts[i] (after states[i]; None: a fresh text), then generates max_chars
        characters with sampling[i]. Waits for slots in the batcher's admission queue (leaving it if the client
        hangs up meanwhile); TooManyStreams, AdmissionQueueFull or ShuttingDown if the worker does not take them."""
        sink = queue.SimpleQueue()
        states = states if states is not None else [None] * len(prompts)
        streams = [Stream(index=i, prompt=prompt, state=state, remaining=max_chars, sampling=row_sampling,
                          version=model.version, state_size=model.state_size, sink=sink)
                   for i, (prompt, state, row_sampling) in enumerate(zip(prompts, states, sampling, strict=True))]
        batcher.submit(streams, gone=client_gone_check())
        generation = cls(streams, sink, endpoint, settings, metrics)
        generation.record.admitted(sum(len(p) for p in prompts))  # (the batcher is eating the streams' own)
        return generation

    def events(self) -> Iterator[Chunk | Done]:
        """Every stream's text and end, until all are done or finished by the caller; a failed stream raises its
        error. The first event is awaited now, before the route picks its reply: a request whose backend is
        down or whose input the model refuses gets its 4xx/5xx, not a 200 with an error inside."""
        events = self._events()
        try:
            first = next(events, None)
        except BaseException:
            self.cancel()
            raise
        if first is None:
            return events
        self._first_held = True
        return self._held(first, events)

    def _held(self, first, events) -> Iterator[Chunk | Done]:
        self._first_held = False  # runs when the route asks for the first event
        yield first
        yield from events

    def _events(self) -> Iterator[Chunk | Done]:
        while self.open:
            event = self._next_event(self._idle_left())
            if event is None:
                self._end(self.open, "error")
                raise GenerationStalled(f"no output for {self.settings.stream_idle_timeout_s:g} s")
            if isinstance(event, Failed):
                # The request fails whole: its other streams are cut. A 499 is a client gone (not a failure).
                self._end(self.open, "abort" if getattr(event.error, "status", None) == 499 else "error")
                raise event.error
            now = time.perf_counter()
            if isinstance(event, Chunk):
                self.record.generated(len(event.text))
                if self.first_char_at is None:
                    self.first_char_at = now
                    self.metrics.time_to_first_char.labels(self.endpoint).observe(now - self.started)
                last = self.last_chunk_at.get(event.index)
                if last is not None:
                    self.metrics.inter_char.labels(self.endpoint).observe((now - last) / len(event.text))
                self.last_chunk_at[event.index] = now
            else:
                self._end({event.index}, "length")
            yield event

    def _idle_left(self) -> float:
        return self.settings.stream_idle_timeout_s - (time.perf_counter() - self._last_event_at)

    def _next_event(self, timeout: float):
        """The next event of an open stream (a held one first), waiting at most `timeout`; None if none came."""
        if self._ready is not None:
            event, self._ready = self._ready, None
            if event.index in self.open:  # (its stream may have been finished since)
                return event
        deadline = time.perf_counter() + timeout
        while True:
            try:
                event = self.sink.get(timeout=max(deadline - time.perf_counter(), 0))
            except queue.Empty:
                return None
            self._last_event_at = time.perf_counter()
            if event.index in self.open:
                return event

    def ready_within(self, seconds: float) -> bool:
        """Whether the route can take its next event within `seconds` without blocking (an event came, no stream
        is open, or the idle time is up and the route will raise). False: nothing came; the SSE layer sends a
        keep-alive comment and asks again."""
        if self._first_held or self._ready is not None or not self.open:
            return True
        left = self._idle_left()
        if left > 0:
            self._ready = self._next_event(min(seconds, left))
        return self._ready is not None or self._idle_left() <= 0

    def _end(self, indices, reason: str) -> None:
        """Streams of `indices` still open end, for `reason` (charlm_request_success_total's finished_reason)."""
        ended = self.open & set(indices)
        self.open -= ended
        self.record.finished(reason, len(ended))

    def finish(self, index: int) -> None:
        """Stop one stream early (a stop string was found)."""
        self._end({index}, "stop")
        for stream in self.streams:
            if stream.index == index:
                stream.cancelled = True

    def cancel(self, reason: str = "abort") -> None:
        """The client is gone or the request failed or is answered: the batcher drops these streams before its
        next call. Streams still open end for `reason` ("abort": the client went away; "error": the request
        failed), and the request's record closes (end-to-end latency; a streamed reply's response count)."""
        self._end(self.open, reason)
        if reason == "error":
            self.record.failed = True
        for stream in self.streams:
            stream.cancelled = True
        self.record.close()


class StopScanner:
    """Cuts a stream at the first stop string; holds back a possible start of one until it is decided."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text that can be sent now, whether a stop string was reached)."""
        self.buffer += text
        found = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            emit, self.buffer = self.buffer[: min(found)], ""
            return emit, True
        cut = max(len(self.buffer) - self.hold, 0)
        emit, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return emit, False

    def flush(self) -> str:
        rest, self.buffer = self.buffer, ""
        return rest


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def guarded(events: Iterator[str], generation: RequestStreams) -> Iterator[str]:
    """Once the 200 and its headers are sent, a failure can only be told in the stream: as an error event in
    OpenAI's envelope (its clients raise it), never a cut connection or a traceback. Counted as a failed
    response (charlm_responses_total status "stream_error"), not as the 200 it started as."""
    try:
        yield from kept_alive(events, generation)
    except Exception as e:
        error = as_api_error(e)
        if error is None:
            log.exception("stream failed")
            error = internal_error()
        generation.cancel("error")
        yield sse(error.body())
    finally:
        generation.cancel()  # a client that went away closes this generator: its streams stop at the next chunk


KEEP_ALIVE = ": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic


def kept_alive(events: Iterator[str], generation: RequestStreams) -> Iterator[str]:
    """`events`, with a keep-alive comment each time the route's next event has been settings.sse_keepalive_s in
    coming (the wait is the event queue's own, with that timeout: no polling). The route's idle timeout still
    ends a stalled stream. The wait happens here, before the route is asked for its next piece of text, so the
    routes need not know of it; a route that sends two pieces for one batcher event while streams are still
    open would have the second wait for the next batcher event (today's send at most one)."""
    interval = generation.settings.sse_keepalive_s
    if not interval:
        yield from events
        return
    events = iter(events)
    try:
        while True:
            while not generation.ready_within(interval):
                yield KEEP_ALIVE
            try:
                text = next(events)
            except StopIteration:
                return
            yield text
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def event_stream(events: Iterator[str], generation: RequestStreams) -> Response:
    """A text/event-stream response. The generator needs no request context (it holds what it uses), so it is
    not wrapped in stream_with_context. The WSGI server closes the response when the client is gone (a write
    fails) or the stream ends; closing cancels the streams, even if the body was never iterated."""
    response = Response(guarded(events, generation), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # no proxy buffering
    response.call_on_close(generation.cancel)
    return response
