"""Streaming throughput and time to first character of the gateway, through HTTP, for the 2x512 shape.

    python -m benchmarks.bench_serve [--hidden 512 --layers 2 --chars 2000 --concurrency 16 64]

Exports a random-weights model of the shape (training.export.export_untrained), starts gunicorn with
serving/gunicorn.conf.py on 127.0.0.1 (local backend, serving.launch.GunicornGateway), and measures with a streaming HTTP client (http.client,
server-sent events parsed as they arrive): one stream's characters per second from request to last
character; time to first character for 100-character prompts (each prompt different); aggregate characters per
second with many concurrent streams. The in-process `generate` rate of the same model (model_interface's
ModelClient, in-process transport) is measured first, as the ceiling the gateway adds its overhead to. Prints one JSON line per measurement and appends them to
docs/results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.bench_generate import RESULTS, time_generate  # noqa: E402
from benchmarks.machine import machine  # noqa: E402
from model_interface.client import InProcess, ModelClient  # noqa: E402
from model_interface.signatures import MAX_CHARS_PER_CALL, SamplingSettings, fresh_states  # noqa: E402
from serving.launch import GunicornGateway  # noqa: E402

VOCAB = [chr(32 + i) for i in range(65)]  # the random-weights model's vocabulary
PROMPT_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ      ,.;:!?"


def stream_completion(port: int, prompt: str, max_tokens: int, seed: int) -> dict:
    """One streamed /v1/completions -> {"chars", "ttfc_s", "total_s"}, timed from sending the request."""
    body = json.dumps({"model": "charlm", "prompt": prompt, "max_tokens": max_tokens, "seed": seed,
                       "temperature": 1.0, "top_p": 0.95, "stream": True})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {response.read()[:300]!r}")
    buffer, chars, first = "", 0, None
    while True:
        data = response.read1(65536)
        if not data:
            break
        buffer += data.decode("utf-8")
        *events, buffer = buffer.split("\n\n")
        for event in events:
            payload = event.removeprefix("data: ")
            if payload == "[DONE]":
                continue
            text = json.loads(payload)["choices"][0]["text"]
            if text and first is None:
                first = time.perf_counter() - started
            chars += len(text)
    total = time.perf_counter() - started
    connection.close()
    return {"chars": chars, "ttfc_s": first, "total_s": total}


def concurrent(port: int, streams: int, chars: int) -> float:
    """Aggregate chars/s of `streams` streams started together."""
    results, barrier = [None] * streams, threading.Barrier(streams)

    def run(i):
        barrier.wait()
        results[i] = stream_completion(port, "".join(random.choices(PROMPT_CHARS, k=20)), chars, i)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert all(r["chars"] == chars for r in results), "a stream came back short"
    return sum(r["chars"] for r in results) / elapsed


def first_chunk_seconds(client: ModelClient, repeats: int) -> float:
    """Median time of the call the gateway makes for a new stream with a 100-character prompt: the prompt
    and the first chunk (4 characters), from a full-width zero state -- the floor under the gateway's time to
    first character."""
    states = fresh_states(1, client.metadata.state_size)
    times = []
    for i in range(repeats + 1):
        prompt = "".join(random.choices(PROMPT_CHARS, k=100))
        started = time.perf_counter()
        client.generate([prompt], 4, SamplingSettings(top_p=0.95, seed=i), states)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first call pays for graph optimisation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chars", type=int, default=2000, help="characters of the one-stream measurement")
    parser.add_argument("--repeats", type=int, default=3, help="one-stream runs (median reported)")
    parser.add_argument("--ttfc-requests", type=int, default=30)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--concurrent-chars", type=int, default=400, help="characters per concurrent stream")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    args = parser.parse_args()
    if not 1 <= args.chars <= MAX_CHARS_PER_CALL:  # the in-process ceiling is measured in one generate call
        parser.error(f"--chars must be in 1..{MAX_CHARS_PER_CALL}, got {args.chars}")

    import tensorflow as tf

    from training.config import TrainConfig
    from training.export import export_untrained

    random.seed(0)
    config = dataclasses.replace(TrainConfig(), hidden_size=args.hidden, num_layers=args.layers,
                                 embedding_size=64, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        version = export_untrained(config, VOCAB, Path(tmp), "charlm")  # -> <tmp>/charlm/1
        client = ModelClient(InProcess(version))
        in_process = time_generate(client, 1, args.chars, 3)
        in_process_ttfc = first_chunk_seconds(client, args.ttfc_requests)
        client.close()  # free the cores' caches and memory for the gateway
        with GunicornGateway(version.parent, Path(tmp) / "gunicorn.log", {"CHARLM_MAX_STREAMS": "80"},
                             ready_timeout_s=300, stop_timeout_s=60) as gateway:
            port = gateway.port
            stream_completion(port, "A", 50, 0)  # warm the connection path
            singles = [stream_completion(port, " ", args.chars, seed) for seed in range(args.repeats)]
            single = statistics.median(r["chars"] / r["total_s"] for r in singles)
            ttfc = sorted(stream_completion(port, "".join(random.choices(PROMPT_CHARS, k=100)), 8, i)["ttfc_s"]
                          for i in range(args.ttfc_requests))
            aggregate = {n: concurrent(port, n, args.concurrent_chars) for n in args.concurrency}

    shape = dict(hidden=args.hidden, layers=args.layers)
    p50, p90 = statistics.median(ttfc), ttfc[int(0.9 * (len(ttfc) - 1))]
    lines = [
        {"impl": "in-process generate", "streams": 1, "chars_per_s": round(in_process), **shape},
        {"impl": "gateway HTTP", "streams": 1, "chars_per_s": round(single), "chars": args.chars, **shape},
        {"impl": "in-process generate", "measure": "100_char_prompt_plus_first_chunk",
         "p50_ms": round(in_process_ttfc * 1000, 1), **shape},
        {"impl": "gateway HTTP", "measure": "ttfc_100_char_prompt", "p50_ms": round(p50 * 1000, 1),
         "p90_ms": round(p90 * 1000, 1), "requests": len(ttfc), **shape},
        *({"impl": "gateway HTTP", "streams": n, "aggregate_chars_per_s": round(rate),
           "chars_per_stream": args.concurrent_chars, **shape} for n, rate in aggregate.items()),
        {"loadavg_1min": round(os.getloadavg()[0], 1), "cores": os.cpu_count()},
    ]
    for line in lines:
        print(json.dumps(line), flush=True)
    if not args.no_record:
        rows = "".join(f"| {n} concurrent streams, aggregate | {round(rate):,} chars/s |\n"
                       for n, rate in aggregate.items())
        with open(RESULTS, "a") as f:
            f.write(f"\n### Gateway streaming, {time.strftime('%Y-%m-%d')}\n\n"
                    f"`make bench-serve` (`python -m benchmarks.bench_serve`), {machine()}, TensorFlow "
                    f"{tf.__version__}, gunicorn (serving/gunicorn.conf.py, 1 gthread worker) on 127.0.0.1, "
                    f"local backend, {args.layers}x{args.hidden} LSTM (random weights), top_p 0.95, streamed "
                    f"/v1/completions read by an http.client SSE reader.\n\n"
                    f"| measurement | result |\n| --- | --- |\n"
                    f"| in-process `generate`, one stream (the ceiling) | {round(in_process):,} chars/s |\n"
                    f"| one stream through HTTP, request to last character ({args.chars} chars) | "
                    f"{round(single):,} chars/s |\n"
                    f"| in-process `generate` of a 100-character prompt + the first 4 characters (the floor) | "
                    f"p50 {in_process_ttfc * 1000:.1f} ms |\n"
                    f"| time to first character through HTTP, 100-character prompt ({len(ttfc)} requests) | "
                    f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms |\n{rows}"
                    f"\nLoad average when it finished: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                    f"(other work on the machine slows every figure).\n")


if __name__ == "__main__":
    main()
