"""Continuous batching, driven directly: what each backend call holds, and that none of it changes a text; admission
(a bounded first-come-first-served wait for slots) and shutdown (a deadline for the streams running)."""
import queue
import threading
import time

import numpy as np
import pytest

from model_interface.errors import ModelUnavailable
from model_interface.signatures import SamplingSettings
from serving.batcher import Batcher, Chunk, Done, Failed, Stream
from serving.errors import AdmissionQueueFull, ClientGone, ShuttingDown, TooManyStreams, as_api_error
from serving.metrics import Metrics
from serving.settings import Settings
from serving_helpers import shared_app, wait_until


class RecordingBackend:
    """The real local backend, with a record of every generate call's rows (and a switch to fail them)."""

    def __init__(self, backend):
        self.backend, self.calls, self.fail = backend, [], False
        self.gate = threading.Event()
        self.gate.set()

    def call(self, signature, version, inputs, outputs=None):
        self.gate.wait()
        self.calls.append({"seeds": inputs["seed"].tolist(), "num_chars": inputs["num_chars"].tolist(),
                           "prompt_lengths": [len(p) for p in inputs["prompt"]],
                           "state_shape": inputs["state"].shape})
        if self.fail:
            raise ModelUnavailable("TF Serving is down (test)")
        return self.backend.call(signature, version, inputs, outputs)


@pytest.fixture(scope="module")
def local(exported_model):
    return shared_app(exported_model[0]).extensions["charlm.backend"]  # only called, never changed


STATE_SIZE = 65  # the session's tiny model: 1 layer x (h, c) x 32 units + the position


def test_fresh_rows_get_full_width_zero_states(local):
    """TF Serving's batching stacks calls from many gateways: every call must send the full state width."""
    batcher, backend = make_batcher(local)
    _, sink = submit(batcher, row(prompt="ROMEO:", remaining=10, seed=1), row(prompt="", remaining=10, seed=2))
    collect(sink, 2)
    assert backend.calls and all(call["state_shape"][1] == STATE_SIZE for call in backend.calls)


def make_batcher(local, **settings):
    backend = RecordingBackend(local)
    return Batcher(backend, Settings(model_dir="unused", **settings), Metrics()), backend


def row(remaining, seed, prompt="", state=None, temperature=1.0, top_k=0):
    """One stream to submit: (prompt, state, characters to generate, how it samples)."""
    return prompt, state, remaining, SamplingSettings(temperature=temperature, top_k=top_k, seed=seed)


def submit(batcher, *rows):
    sink = queue.SimpleQueue()
    streams = [Stream(index=i, prompt=prompt, state=state, remaining=remaining, sampling=sampling, version=1,
                      state_size=STATE_SIZE, sink=sink)
               for i, (prompt, state, remaining, sampling) in enumerate(rows)]
    batcher.submit(streams)
    return streams, sink


def collect(sink, n_streams, timeout=60):
    texts, ends = {}, {}
    while len(ends) < n_streams:
        event = sink.get(timeout=timeout)
        if isinstance(event, Chunk):
            texts[event.index] = texts.get(event.index, "") + event.text
        else:
            ends[event.index] = event
    return texts, ends


def test_chunks_start_small_and_double(local):
    batcher, backend = make_batcher(local, first_chunk=4, max_chunk=32)
    _, sink = submit(batcher, row(prompt="ROMEO:", remaining=100, seed=1))
    texts, ends = collect(sink, 1)
    assert len(texts[0]) == 100 and isinstance(ends[0], Done) and ends[0].state.shape == (65,)
    assert [c["num_chars"][0] for c in backend.calls] == [4, 8, 16, 32, 32, 8]
    assert backend.calls[0]["prompt_lengths"] == [6] and backend.calls[1]["prompt_lengths"] == [0]


def test_seeded_text_is_the_same_alone_batched_and_joining_late(local):
    alone_batcher, _ = make_batcher(local)
    _, sink = submit(alone_batcher, row(prompt="JULIET:\n", remaining=300, seed=77, temperature=0.7))
    alone = collect(sink, 1)[0][0]

    batcher, backend = make_batcher(local, first_chunk=2, max_chunk=16)
    others = [row(prompt=p, remaining=n, seed=s, top_k=k) for p, n, s, k in
              [("A", 50, 1, 0), ("KING:", 400, 2, 3), ("", 10, 3, 0)]]
    streams, sink = submit(batcher, row(prompt="JULIET:\n", remaining=300, seed=77, temperature=0.7), *others)
    # A stream that arrives mid-flight joins at the next call.
    first = sink.get(timeout=30)
    assert isinstance(first, Chunk)
    _, late_sink = submit(batcher, row(prompt="Nurse:", remaining=40, seed=78))
    late_text = collect(late_sink, 1)[0][0]
    texts = collect(sink, 4)[0]
    # The first event was already taken off the queue: put it back in front of its stream's text.
    texts[first.index] = first.text + texts.get(first.index, "")
    assert texts[0] == alone
    assert [len(texts[i]) for i in range(4)] == [300, 50, 400, 10] and len(late_text) == 40
    assert backend.calls[0]["seeds"] == [77, 1, 2, 3]  # submitted together, advanced together
    joined = [c for c in backend.calls if 78 in c["seeds"]][0]
    # Its first chunk is 2, but its prompt piece ("Nurse:") makes the call 6 steps longer for the stream already
    # running beside it anyway: the call generates 6 for every row (serving/batcher.py, `_advance`).
    assert 77 in joined["seeds"] and joined["num_chars"][joined["seeds"].index(78)] == len("Nurse:")
    assert joined["num_chars"][joined["seeds"].index(77)] == len("Nurse:")
    assert wait_until(lambda: batcher.count() == 0)


def test_newcomer_first_keeps_a_call_with_first_characters_short(local):
    """CHARLM_NEWCOMER_FIRST: a call holding a stream's first characters generates the smallest chunk for every row,
    even when it feeds a prompt piece; the texts are those of the default."""
    texts = {}
    for newcomer_first in (False, True):
        batcher, backend = make_batcher(local, first_chunk=2, max_chunk=16, newcomer_first=newcomer_first)
        _, sink = submit(batcher, row(prompt="JULIET:\n", remaining=200, seed=77))
        first = sink.get(timeout=30)
        _, late_sink = submit(batcher, row(prompt="Nurse, look!", remaining=40, seed=78))
        late = collect(late_sink, 1)[0][0]
        text = first.text + collect(sink, 1)[0][0]
        joined = [c for c in backend.calls if 78 in c["seeds"]][0]
        assert 77 in joined["seeds"]  # 200 characters in chunks of 2, 4, 8, 16...: still running
        expected = 2 if newcomer_first else len("Nurse, look!")
        assert joined["num_chars"][joined["seeds"].index(78)] == expected
        assert joined["num_chars"][joined["seeds"].index(77)] == expected
        texts[newcomer_first] = (text, late)
    assert texts[True] == texts[False]
    assert wait_until(lambda: batcher.count() == 0)


def test_long_prompts_are_fed_in_pieces(local):
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    whole_batcher, _ = make_batcher(local)
    _, sink = submit(whole_batcher, row(prompt=prompt, remaining=60, seed=5))
    whole = collect(sink, 1)[0][0]
    batcher, backend = make_batcher(local, prompt_chunk=50)
    _, sink = submit(batcher, row(prompt=prompt, remaining=60, seed=5))
    assert collect(sink, 1)[0][0] == whole
    assert [c["prompt_lengths"][0] for c in backend.calls[:4]] == [50, 50, 50, len(prompt) - 150]
    assert [c["num_chars"][0] for c in backend.calls[:4]] == [0, 0, 0, 4]


def test_cancelled_streams_are_dropped_before_the_next_call(local):
    batcher, backend = make_batcher(local, first_chunk=1, max_chunk=1)
    streams, sink = submit(batcher, row(prompt="A", remaining=5000, seed=1), row(prompt="B", remaining=30, seed=2))
    assert isinstance(sink.get(timeout=30), Chunk)
    backend.gate.clear()  # hold the next call while the client goes away
    streams[0].cancelled = True
    calls_before = len(backend.calls)
    backend.gate.set()
    texts, _ = collect(sink, 1)  # stream 1 finishes; stream 0 never does
    assert wait_until(lambda: batcher.count() == 0)
    assert all(1 not in c["seeds"] for c in backend.calls[calls_before + 1:])
    assert len(texts.get(0, "")) < 20
    assert batcher.metrics.registry.get_sample_value("charlm_cancelled_streams_total") == 1


def test_too_many_streams_are_refused_at_once_without_a_queue(local):
    batcher, backend = make_batcher(local, max_streams=3, max_queued=0)
    backend.gate.clear()
    streams, _ = submit(batcher, *[row(remaining=10, seed=i) for i in range(3)])
    with pytest.raises(TooManyStreams):
        submit(batcher, row(remaining=10, seed=9))
    for stream in streams:
        stream.cancelled = True
    backend.gate.set()
    assert wait_until(lambda: batcher.count() == 0)
    _, sink = submit(batcher, row(remaining=10, seed=9))
    assert isinstance(collect(sink, 1)[1][0], Done)


def test_a_failed_call_fails_its_streams_and_the_batcher_goes_on(local):
    batcher, backend = make_batcher(local)
    backend.fail = True
    _, sink = submit(batcher, row(remaining=10, seed=1), row(remaining=10, seed=2))
    _, ends = collect(sink, 2)
    assert all(isinstance(e, Failed) and "down" in str(e.error) for e in ends.values())
    assert wait_until(lambda: batcher.count() == 0)
    backend.fail = False
    _, sink = submit(batcher, row(remaining=10, seed=1))
    assert len(collect(sink, 1)[0][0]) == 10


def test_more_streams_than_one_call_takes_take_turns(local):
    batcher, backend = make_batcher(local, max_batch=2, first_chunk=8, max_chunk=8)
    _, sink = submit(batcher, *[row(prompt="A", remaining=24, seed=i) for i in range(5)])
    texts, _ = collect(sink, 5)
    assert [len(texts[i]) for i in range(5)] == [24] * 5
    assert max(len(c["seeds"]) for c in backend.calls) == 2


def test_a_state_continues_exactly(local):
    batcher, _ = make_batcher(local)
    _, sink = submit(batcher, row(prompt="ROMEO:", remaining=120, seed=3))
    whole = collect(sink, 1)[0][0]
    _, sink = submit(batcher, row(prompt="ROMEO:", remaining=50, seed=3))
    texts, ends = collect(sink, 1)
    _, sink = submit(batcher, row(prompt="", state=ends[0].state, remaining=70, seed=3))
    assert texts[0] + collect(sink, 1)[0][0] == whole
    assert np.isclose(ends[0].state[-1], 56)  # the position: 6 prompt characters + 50 generated


def test_chunks_carry_each_characters_log_probability_and_the_alternatives_asked_for(local, model_client):
    batcher, _ = make_batcher(local, first_chunk=4, max_chunk=8)
    asking = SamplingSettings(seed=1, logprobs=3)
    streams, sink = submit(batcher, ("ROMEO:", None, 30, asking), row(prompt="ROMEO:", remaining=30, seed=1))
    chunks = {0: [], 1: []}
    done = 0
    while done < 2:
        event = sink.get(timeout=60)
        if isinstance(event, Chunk):
            chunks[event.index].append(event)
        else:
            done += 1
    texts = {i: "".join(c.text for c in chunks[i]) for i in chunks}
    assert texts[0] == texts[1]  # asking for alternatives never changes the text
    for chunk in chunks[0]:
        assert chunk.log_probs.shape == (len(chunk.text),) and chunk.top_ids.shape == (len(chunk.text), 3)
    assert all(c.top_ids is None and c.log_probs.shape == (len(c.text),) for c in chunks[1])
    # The model's distribution before each character, recomputed by reading the text.
    out = model_client.score(["ROMEO:" + texts[0]])
    log_probs = np.concatenate([c.log_probs for c in chunks[0]])
    assert np.allclose(log_probs, out["log_probs"][0, 6:36], atol=2e-4)
    top_ids = np.concatenate([c.top_ids for c in chunks[0]])
    assert (top_ids[:, 0] == out["top_ids"][0, 6:36, 0]).mean() > 0.9  # (a near-tie may swap the first two)


class Submitter:
    """batcher.submit(...) in its own thread, as a request's thread calls it: whether it returned, or what it raised."""

    def __init__(self, batcher, *rows, gone=None):
        self.sink = queue.SimpleQueue()
        self.streams = [Stream(index=i, prompt=prompt, state=state, remaining=remaining, sampling=sampling, version=1,
                               state_size=STATE_SIZE, sink=self.sink)
                        for i, (prompt, state, remaining, sampling) in enumerate(rows)]
        self.error, self.returned_at = None, None
        self.thread = threading.Thread(target=self._submit, args=(batcher, gone), daemon=True)
        self.thread.start()

    def _submit(self, batcher, gone):
        try:
            batcher.submit(self.streams, gone=gone)
            self.returned_at = time.perf_counter()
        except Exception as e:
            self.error = e

    def done(self, timeout=10.0) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def wait_sample(batcher, outcome, what="count"):
    return batcher.metrics.registry.get_sample_value(f"charlm_admission_wait_seconds_{what}",
                                                     {"model_name": "", "outcome": outcome}) or 0


def test_past_the_limit_a_request_waits_and_a_cancelled_stream_frees_its_slot_at_once(local):
    """The slot of a stream whose client left frees when it is cancelled, while the backend call that still holds its
    row is running: the waiting request is admitted before that call ends, not at the batcher's next one."""
    batcher, backend = make_batcher(local, max_streams=2, max_queue_wait_s=30)
    backend.gate.clear()  # the first call is held in flight
    running, _ = submit(batcher, row(remaining=5000, seed=1), row(remaining=5000, seed=2))
    waiter = Submitter(batcher, row(remaining=10, seed=3))
    assert wait_until(lambda: batcher.waiting() == 1)
    assert not waiter.done(timeout=0.3) and batcher.count() == 2
    assert batcher.metrics.registry.get_sample_value("charlm_admission_queue_depth", {"model_name": ""}) == 1
    cancelled_at = time.perf_counter()
    running[0].cancelled = True
    assert waiter.done(timeout=5) and waiter.error is None
    assert not backend.gate.is_set() and backend.calls == []  # the call in flight has not ended
    print(f"admitted {1000 * (waiter.returned_at - cancelled_at):.2f} ms after the cancellation")
    assert batcher.count() == 2 and batcher.waiting() == 0
    assert batcher.metrics.registry.get_sample_value("charlm_admission_queue_depth", {"model_name": ""}) == 0
    assert batcher.metrics.registry.get_sample_value("charlm_cancelled_streams_total") == 1
    assert wait_sample(batcher, "admitted") == 2 and wait_sample(batcher, "admitted", "sum") >= 0.3
    running[1].cancelled = True
    backend.gate.set()
    texts, ends = collect(waiter.sink, 1)
    assert len(texts[0]) == 10 and isinstance(ends[0], Done)
    assert wait_until(lambda: batcher.count() == 0)


def test_waiting_requests_are_admitted_first_come_first_served(local):
    """A request wanting one slot does not pass an earlier one wanting two, even while one slot is free."""
    batcher, backend = make_batcher(local, max_streams=2, max_queue_wait_s=30)
    backend.gate.clear()
    running, _ = submit(batcher, row(remaining=5000, seed=1))
    first = Submitter(batcher, row(remaining=10, seed=2), row(remaining=10, seed=3))
    assert wait_until(lambda: batcher.waiting() == 1)
    second = Submitter(batcher, row(remaining=10, seed=4))
    assert wait_until(lambda: batcher.waiting() == 2)
    assert not second.done(timeout=0.3) and batcher.count() == 1  # a slot is free: still behind the first
    running[0].cancelled = True
    assert first.done() and first.error is None
    assert not second.done(timeout=0.3) and batcher.count() == 2
    first.streams[0].cancelled = True
    assert second.done() and second.error is None and batcher.waiting() == 0
    for stream in first.streams + second.streams:
        stream.cancelled = True
    backend.gate.set()
    assert wait_until(lambda: batcher.count() == 0)


def test_a_full_queue_refuses_at_once_and_a_wait_runs_out(local):
    batcher, backend = make_batcher(local, max_streams=1, max_queued=1, max_queue_wait_s=0.5, retry_after_s=3)
    backend.gate.clear()
    running, _ = submit(batcher, row(remaining=5000, seed=1))
    waiter = Submitter(batcher, row(remaining=10, seed=2))
    assert wait_until(lambda: batcher.waiting() == 1)
    started = time.perf_counter()
    with pytest.raises(AdmissionQueueFull) as full:
        submit(batcher, row(remaining=10, seed=3))
    assert time.perf_counter() - started < 0.1 and full.value.retry_after_s == 3
    assert waiter.done(timeout=5)
    assert type(waiter.error) is TooManyStreams and "0.5 s" in str(waiter.error)
    assert batcher.waiting() == 0 and batcher.count() == 1
    assert wait_sample(batcher, "timeout") == 1 and wait_sample(batcher, "timeout", "sum") >= 0.5
    assert wait_sample(batcher, "queue_full") == 1
    running[0].cancelled = True
    backend.gate.set()
    assert wait_until(lambda: batcher.count() == 0)


def test_a_waiting_request_whose_client_goes_away_leaves_the_queue(local):
    batcher, backend = make_batcher(local, max_streams=1, max_queue_wait_s=30, disconnect_check_s=0.05)
    backend.gate.clear()
    running, _ = submit(batcher, row(remaining=5000, seed=1))
    client_gone = threading.Event()
    waiter = Submitter(batcher, row(remaining=10, seed=2), gone=client_gone.is_set)
    assert wait_until(lambda: batcher.waiting() == 1)
    client_gone.set()
    assert waiter.done(timeout=2)
    assert isinstance(waiter.error, ClientGone) and as_api_error(waiter.error).code == "client_closed_request"
    assert batcher.waiting() == 0 and batcher.count() == 1 and wait_sample(batcher, "gone") == 1
    running[0].cancelled = True
    backend.gate.set()
    # Its place is not held: the next request is admitted at once.
    _, sink = submit(batcher, row(remaining=10, seed=3))
    assert isinstance(collect(sink, 1)[1][0], Done)


def test_shutdown_refuses_new_and_waiting_requests_and_ends_streams_past_the_grace(local):
    batcher, backend = make_batcher(local, max_streams=2, max_queue_wait_s=30, first_chunk=1, max_chunk=1)
    _, short_sink = submit(batcher, row(remaining=20, seed=1))
    _, long_sink = submit(batcher, row(remaining=8192, seed=2))
    waiter = Submitter(batcher, row(remaining=10, seed=3))
    assert wait_until(lambda: batcher.waiting() == 1)
    shut_at = time.perf_counter()
    batcher.shutdown(1.0)
    assert waiter.done(timeout=2) and isinstance(waiter.error, ShuttingDown)
    with pytest.raises(ShuttingDown):
        submit(batcher, row(remaining=10, seed=4))
    texts, ends = collect(short_sink, 1)
    assert len(texts[0]) == 20 and isinstance(ends[0], Done)  # it finished within the grace
    texts, ends = collect(long_sink, 1)
    ended = time.perf_counter() - shut_at
    assert isinstance(ends[0], Failed) and isinstance(ends[0].error, ShuttingDown)
    assert 0 < len(texts.get(0, "")) < 8192 and 1.0 <= ended < 3.0
    assert wait_until(lambda: batcher.count() == 0)
    assert batcher.metrics.registry.get_sample_value("charlm_cancelled_streams_total") == 0  # not clients gone
    assert wait_sample(batcher, "shutdown") == 2
