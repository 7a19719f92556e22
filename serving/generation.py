"""What the generating routes share: submitting a request's streams to the batcher, reading their events
(recording time to first character and inter-character latency), stop strings, server-sent events."""
from __future__ import annotations

import json
import logging
import queue
import secrets
import time
from typing import Iterator

from flask import Response, g

from serving.backends import ModelInfo
from serving.batcher import Batcher, Chunk, Done, Failed, Stream, TooManyStreams
from serving.errors import APIError, bad_request

INT64 = 2 ** 63
log = logging.getLogger(__name__)


def random_seed() -> int:
    return secrets.randbits(63)


def check_vocabulary(model: ModelInfo, text: str, param: str) -> None:
    unknown = model.unknown_chars(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
        raise bad_request(f"{param} has characters outside the model's vocabulary: {shown}", param,
                          code="unknown_characters")


class RequestStreams:
    """The streams of one HTTP request and the events they send back, in arrival order."""

    def __init__(self, batcher: Batcher, streams: list[Stream], sink: queue.SimpleQueue, endpoint: str,
                 settings, metrics):
        self.batcher, self.streams, self.sink = batcher, streams, sink
        self.endpoint, self.settings, self.metrics = endpoint, settings, metrics
        self.open = {s.index for s in streams}
        self.started = getattr(g, "started", time.perf_counter())
        self.first_char_at: float | None = None
        self.last_chunk_at: dict[int, float] = {}

    @classmethod
    def submit(cls, batcher: Batcher, model: ModelInfo, rows: list[dict], endpoint: str, settings, metrics):
        sink = queue.SimpleQueue()
        streams = [Stream(index=i, version=model.version, state_size=model.state_size, sink=sink, **row) for i, row in enumerate(rows)]
        try:
            batcher.submit(streams)
        except TooManyStreams as e:
            raise APIError(429, f"too many concurrent streams: {e}; retry shortly", code="too_many_streams",
                           headers={"Retry-After": str(settings.retry_after_s)}) from None
        return cls(batcher, streams, sink, endpoint, settings, metrics)

    def events(self) -> Iterator[Chunk | Done | Failed]:
        """Until every stream is done, failed or finished by the caller."""
        while self.open:
            try:
                event = self.sink.get(timeout=self.settings.stream_idle_timeout_s)
            except queue.Empty:
                raise APIError(504, f"no output for {self.settings.stream_idle_timeout_s:g} s",
                               code="generation_stalled") from None
            if event.index not in self.open:
                continue
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

    def first(self) -> tuple[Chunk | Done | Failed | None, Iterator]:
        """The first event, raising its error as the HTTP status if it failed: a request whose backend is down
        or whose input the model refuses gets a 4xx/5xx, not a 200 with an error inside."""
        events = self.events()
        try:
            event = next(events, None)
        except BaseException:
            self.cancel()
            raise
        if isinstance(event, Failed):
            self.cancel()
            raise event.error.as_api_error()
        return event, events

    def finish(self, index: int) -> None:
        """Stop one stream early (a stop string was found)."""
        self.open.discard(index)
        for stream in self.streams:
            if stream.index == index:
                stream.cancelled = True

    def cancel(self) -> None:
        """The client is gone or the request failed: the batcher drops these streams before its next call."""
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
    except APIError as e:
        yield sse(e.body())
    except Exception:
        log.exception("stream failed")
        yield sse(APIError(500, "internal error; it has been logged", code="internal_error").body())
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
