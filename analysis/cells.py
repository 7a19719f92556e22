"""Interpretable cells: rank every cell of every layer by how well its activation tracks a feature.

The score is Pearson's correlation r between a cell's per-character value and the feature track; r² is what a
one-cell linear probe (feature ≈ a·cell + b) explains, so the two rankings agree. With hundreds of cells the
best of them on some text is partly luck, so each cell is *chosen* on some of the characters and *scored* on
the others, which it has not been chosen on: the reported r is a held-out one. The two parts are alternate
blocks of SELECT_BLOCK characters, not two halves: a rare feature (strings in C, quotes in prose) comes in
clusters, and halves can put all of it on one side.
"""
from __future__ import annotations

import numpy as np

SELECT_BLOCK = 2000  # characters per block; even blocks choose the cells, odd blocks score them


def scored_part(steps: int, block: int = SELECT_BLOCK) -> np.ndarray:
    """(time,) True where a character belongs to a scoring block: the odd blocks (with fewer than two blocks'
    worth of text, the second half)."""
    block = min(block, max(1, steps // 2))
    return (np.arange(steps) // block) % 2 == 1


def scored_blocks(steps: int, block: int = SELECT_BLOCK) -> list[tuple[int, int]]:
    """The scoring part as (start, end) ranges of characters."""
    scored = scored_part(steps, block)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], scored.astype(int), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """values (time, cells), feature (time,) -> Pearson r per cell (cells,); nan for a constant column."""
    values = values.astype(np.float64)
    centred = values - values.mean(axis=0)  # (time, cells)
    target = feature.astype(np.float64) - feature.mean()  # (time,)
    spread = np.sqrt((centred ** 2).sum(axis=0) * (target ** 2).sum())  # (cells,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spread > 1e-12, centred.T @ target / spread, np.nan)


def is_constant(track: np.ndarray) -> bool:
    return bool(len(track) == 0 or np.ptp(track) == 0)


def rank_cells(values: np.ndarray, features: dict[str, np.ndarray], top: int = 5,
               block: int = SELECT_BLOCK) -> dict[str, dict]:
    """values (time, layers, hidden); features {name: (time,)}.

    Returns per feature: "best", the `top` cells by |r| on the choosing part, each {"layer", "cell",
    "r_chosen_on", "r_held_out"}; or "best": [] and a "note" when the feature does not vary on either part
    (no quotes or brackets in the text, say).
    """
    steps, layers, hidden = values.shape
    flat = values.reshape(steps, layers * hidden)  # (time, cells), cell index = layer * hidden + unit
    held = scored_part(steps, block)
    ranking = {}
    for name, track in features.items():
        if len(track) != steps:
            raise ValueError(f"feature {name!r} has {len(track)} values for {steps} characters")
        if is_constant(track[~held]) or is_constant(track[held]):
            ranking[name] = {"best": [], "note": "the feature is constant on this text (on the choosing part, "
                                                 "the scoring part or both)"}
            continue
        r_chosen = correlations(flat[~held], track[~held])
        r_held = correlations(flat[held], track[held])
        order = np.argsort(-np.nan_to_num(np.abs(r_chosen), nan=-1.0))[:top]
        ranking[name] = {"best": [
            {"layer": int(i // hidden), "cell": int(i % hidden), "r_chosen_on": round_or_none(r_chosen[i]),
             "r_held_out": round_or_none(r_held[i])} for i in order]}
    return ranking


def round_or_none(x: float, digits: int = 4):
    return None if not np.isfinite(x) else round(float(x), digits)


def liveliest_window(track: np.ndarray, length: int, ranges: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """The window of `length` characters inside one of `ranges` (default: the whole track) where the feature
    varies most, to show a cell on (the paper's Figure 2 picks passages with quotes, brackets, long lines)."""
    ranges = ranges or [(0, len(track))]
    best, best_spread = (ranges[0][0], ranges[0][0]), -1.0
    for start, end in ranges:
        size = min(length, end - start)
        if size <= 0:
            continue
        for a in range(start, end - size + 1, max(1, size // 4)):
            spread = float(np.std(track[a:a + size]))
            if spread > best_spread:
                best, best_spread = (a, a + size), spread
    return best
