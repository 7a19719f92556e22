"""Interpretable cells: rank every cell of every layer by how well its activation tracks a feature.

The score is Pearson's correlation r between a cell's per-character value and the feature track; r² is what a
one-cell linear probe (feature ≈ a·cell + b) explains, so the two rankings agree. With hundreds of cells the
best of them on some text is partly luck, so each cell is *chosen* on the first half of the characters and
*scored* on the second half, which it has not been chosen on: the reported r is a held-out one.
"""
from __future__ import annotations

import numpy as np

SELECT_FRACTION = 0.5  # the share of the characters cells are chosen on; the rest scores them


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
               select_fraction: float = SELECT_FRACTION) -> dict[str, dict]:
    """values (time, layers, hidden); features {name: (time,)}.

    Returns per feature: "best", the `top` cells by |r| on the choosing part, each {"layer", "cell",
    "r_chosen_on", "r_held_out"}; or "best": [] and a "note" when the feature does not vary on either part
    (no quotes or brackets in the text, say).
    """
    steps, layers, hidden = values.shape
    flat = values.reshape(steps, layers * hidden)  # (time, cells), cell index = layer * hidden + unit
    cut = int(steps * select_fraction)
    ranking = {}
    for name, track in features.items():
        if len(track) != steps:
            raise ValueError(f"feature {name!r} has {len(track)} values for {steps} characters")
        if is_constant(track[:cut]) or is_constant(track[cut:]):
            ranking[name] = {"best": [], "note": "the feature is constant on this text (on one half or both)"}
            continue
        r_chosen = correlations(flat[:cut], track[:cut])
        r_held = correlations(flat[cut:], track[cut:])
        order = np.argsort(-np.nan_to_num(np.abs(r_chosen), nan=-1.0))[:top]
        ranking[name] = {"best": [
            {"layer": int(i // hidden), "cell": int(i % hidden), "r_chosen_on": round_or_none(r_chosen[i]),
             "r_held_out": round_or_none(r_held[i])} for i in order]}
    return ranking


def round_or_none(x: float, digits: int = 4):
    return None if not np.isfinite(x) else round(float(x), digits)


def liveliest_window(track: np.ndarray, length: int, start: int = 0) -> tuple[int, int]:
    """The window of `length` characters at or after `start` where the feature varies most, to show a cell on
    (the paper's Figure 2 picks passages with quotes, brackets, long lines)."""
    length = min(length, len(track) - start)
    if length <= 0:
        return start, start
    best, best_spread = start, -1.0
    for a in range(start, len(track) - length + 1, max(1, length // 4)):
        spread = float(np.std(track[a:a + length]))
        if spread > best_spread:
            best, best_spread = a, spread
    return best, best + length
