"""What the generating routes share: submitting a request's streams to the batcher, reading their events
(recording time to first character and inter-character latency), stop strings, server-sent events."""
from __future__ import annotations

import itertools
import json
import logging
import queue
import secrets
import time
from typing import Iterator, Sequence

import numpy as np
from flask import Response, g

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


class RequestStreams:
    """The streams of one HTTP request and the events they send back, in arrival order."""

    def __init__(self, streams: list[Stream], sink: queue.SimpleQueue, endpoint: str, settings, metrics):
        self.streams, self.sink = streams, sink
        self.endpoint, self.settings, self.metrics = endpoint, settings, metrics
        self.open = {s.index for s in streams}
        self.started = getattr(g, "started", time.perf_counter())
        self.first_char_at: float | None = None
        self.last_chunk_at: dict[int, float] = {}

    @classmethod
    def submit(cls, batcher: Batcher, model: ServedModel, prompts: Sequence[str], max_chars: int,
               sampling: Sequence[SamplingSettings], endpoint: str, settings, metrics,
               states: Sequence[np.ndarray | None] | None = None) -> "RequestStreams":
        """Stream i consumes prompts[i] (after states[i]; None: a fresh text), then generates max_chars
        characters with sampling[i]. TooManyStreams if the worker has no room for them all."""
        sink = queue.SimpleQueue()
        states = states if states is not None else [None] * len(prompts)
        streams = [Stream(index=i, prompt=prompt, state=state, remaining=max_chars, sampling=row_sampling,
                          version=model.version, state_size=model.state_size, sink=sink)
                   for i, (prompt, state, row_sampling) in enumerate(zip(prompts, states, sampling, strict=True))]
        batcher.submit(streams)
        return cls(streams, sink, endpoint, settings, metrics)

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
        return itertools.chain([first] if first is not None else [], events)

    def _events(self) -> Iterator[Chunk | Done]:
        while self.open:
            try:
                event = self.sink.get(timeout=self.settings.stream_idle_timeout_s)
            except queue.Empty:
                raise GenerationStalled(f"no output for {self.settings.stream_idle_timeout_s:g} s") from None
            if event.index not in self.open:
                continue
            if isinstance(event, Failed):
                raise event.error
            now = time.perf_counter()
            if isinstance(event, Chunk):
                if self.first_char_at is None:
                    self.first_char_at = now
                    self.metrics.time_to_first_char.labels(self.endpoint).observe(now - self.started)
                last = self.last_chunk_at.get(event.index)
                if last is not None:
                    self.metrics.inter_char.labels(self.endpoint).observe((now - last) / len(event.text))
                self.last_chunk_at[event.index] = now
            else:
                self.open.discard(event.index)
            yield event

    def finish(self, index: int) -> None:
        """Stop one stream early (a stop string was found)."""
        self.open.discard(index)
        for stream in self.streams:
            if stream.index == index:
                stream.cancelled = True

    def cancel(self) -> None:
        """The client is gone or the request failed or is answered: the batcher drops these streams before its
        next call."""
        self.open.clear()
        for stream in self.streams:
            stream.cancelled = True


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
    OpenAI's envelope (its clients raise it), never a cut connection or a traceback."""
    try:
        yield from events
    except Exception as e:
        error = as_api_error(e)
        if error is None:
            log.exception("stream failed")
            error = internal_error()
        yield sse(error.body())
    finally:
        generation.cancel()  # a client that went away closes this generator: its streams stop at the next chunk


def event_stream(events: Iterator[str], generation: RequestStreams) -> Response:
    """A text/event-stream response. The generator needs no request context (it holds what it uses), so it is
    not wrapped in stream_with_context. The WSGI server closes the response when the client is gone (a write
    fails) or the stream ends; closing cancels the streams, even if the body was never iterated."""
    response = Response(guarded(events, generation), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # no proxy buffering
    response.call_on_close(generation.cancel)
    return response
