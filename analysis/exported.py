"""Running texts of any length through an exported model's `score` and `activations` signatures.

The model is reached through `model_interface.client.ModelClient` (in-process or TF Serving; the signatures,
their inputs and the version's metadata are model_interface's). What is the analysis' own is how a long text
goes through: it is cut into regions that run side by side as the rows of one batch, each region fed chunk by
chunk with its state carried from call to call, and primed with the characters before it so it starts where a
single pass would be.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from model_interface import signatures as sig
from model_interface.client import ModelClient


class ModelError(ValueError):
    """A model, address or text the analysis cannot use; the message says which and why."""


def check_vocabulary(client: ModelClient, text: str) -> None:
    """Refuse a text with characters the model has never seen before any call: the analyses compare every
    character's probability, and the graph would only report them afterwards."""
    unknown = client.metadata.unknown_chars(text)
    if unknown:
        raise ModelError(f"the text has {len(unknown)} character(s) outside the model's vocabulary "
                         f"({client.description}): {''.join(unknown)[:80]!r}; the model cannot read it")


def region_bounds(start: int, end: int, regions: int) -> list[tuple[int, int]]:
    """[start, end) cut into up to `regions` contiguous, nearly equal, non-empty pieces."""
    cuts = np.linspace(start, end, max(1, regions) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def run_text(client: ModelClient, signature: str, text: str, outputs: tuple[str, ...], start: int = 0,
             end: int | None = None, regions: int = 8, chunk_chars: int = 2000, prime_chars: int = 256,
             progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Run text[start:end] through `signature` ("score" or "activations"); returns each requested output for
    every character in order, time first: log_probs (time,), activations (time, layers, hidden).

    Region r > 0 (and region 0 when start > 0) is primed with the `prime_chars` characters before it (through
    `score`, whose outputs are dropped), so its predictions match one continuous pass closely (to ~1e-4 in log
    probability on tiny-shakespeare): what a char-level LSTM predicts rarely depends on more than a few hundred
    characters. A cell that *counts* from the start of the text (quote parity, bracket depth) does depend on
    everything before, so activations for those run as one region.
    """
    end = len(text) if end is None else end
    if not 0 <= start < end <= len(text):
        raise ModelError(f"cannot run characters [{start}, {end}) of a {len(text):,}-character text")
    # The export's per-call limit for generation; also a sane size for one scoring call.
    chunk_chars = max(1, min(chunk_chars, sig.MAX_CHARS_PER_CALL))
    check_vocabulary(client, text[max(0, start - prime_chars):end])
    bounds = region_bounds(start, end, regions)
    primes = [text[max(0, a - prime_chars):a] for a, _ in bounds]
    state = sig.fresh_states(len(bounds))
    if any(primes):
        state = client.score(primes, state, ("state",))["state"]

    pieces: list[dict[str, list[np.ndarray]]] = [{name: [] for name in outputs} for _ in bounds]
    done, total = 0, end - start
    offsets = [a for a, _ in bounds]
    while any(offset < b for offset, (_, b) in zip(offsets, bounds)):
        chunks = [text[offset:min(offset + chunk_chars, b)] for offset, (_, b) in zip(offsets, bounds)]
        out = client.call(signature, sig.text_inputs(chunks, state), tuple(outputs) + ("lengths", "state"))
        state = out["state"]  # rows whose region is finished got "" and keep their state unchanged
        for row, chunk in enumerate(chunks):
            length = int(out["lengths"][row])
            if length != len(chunk):
                raise ModelError(f"the model read {length} characters of a {len(chunk)}-character chunk")
            for name in outputs:
                pieces[row][name].append(out[name][row, :length])
            offsets[row] += length
            done += length
        if progress:
            progress(done, total)
    return {name: np.concatenate([part for region in pieces for part in region[name]]) for name in outputs}
