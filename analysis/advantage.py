"""Where the LSTM beats the best n-gram model, and by how much (the paper's comparison with n-gram models).

The gain at a character is log2 P_lstm − log2 P_ngram: the bits the LSTM saves there (negative where the
n-gram model does better). The paper found the gains concentrated on characters whose prediction needs more
context than any n-gram has: closing brackets and quotes far from their opening, and newlines (line length).
Here the gains are summed by character, and for closers and newlines broken down by how far back the
information lies (distance back to the matching opener, or to the previous newline: the line's length + 1).
"""
from __future__ import annotations

import numpy as np

PAIRS = {")": "(", "]": "[", "}": "{"}
# Buckets [1,5], [6,10], …, [1001, ∞): a C function's braces are often hundreds of characters apart.
DISTANCE_EDGES = (1, 6, 11, 21, 51, 101, 201, 501, 1001, 10 ** 9)


def closer_distances(text: str, skip: np.ndarray | None = None) -> list[tuple[int, int, str]]:
    """(position, distance back to its opener, closer) for every closing bracket that has a matching opener,
    and every closing '"' (the 2nd, 4th, … quote). Brackets where `skip` (time,) is set are not counted: in code,
    a '{' in a comment or a '}' in a string literal would pair with the wrong brace."""
    stacks = {opener: [] for opener in PAIRS.values()}
    quote_open = None
    found = []
    for t, char in enumerate(text):
        if skip is not None and skip[t] and char in "([{}])":
            continue
        if char in stacks:
            stacks[char].append(t)
        elif char in PAIRS and stacks[PAIRS[char]]:
            found.append((t, t - stacks[PAIRS[char]].pop(), char))
        elif char == '"':
            if quote_open is None:
                quote_open = t
            else:
                found.append((t, t - quote_open, char))
                quote_open = None
    return found


def bucket_label(lo: int, hi: int) -> str:
    return f"{lo}+" if hi >= 10 ** 9 else f"{lo}-{hi - 1}"


def by_distance(positions: np.ndarray, distances: np.ndarray, lstm_log2: np.ndarray, ngram_log2: np.ndarray) -> list[dict]:
    rows = []
    for lo, hi in zip(DISTANCE_EDGES[:-1], DISTANCE_EDGES[1:]):
        inside = positions[(distances >= lo) & (distances < hi)]
        if len(inside):
            rows.append({"distance": bucket_label(lo, hi), "count": int(len(inside)),
                         "lstm_bits": round(float(-lstm_log2[inside].mean()), 4),
                         "ngram_bits": round(float(-ngram_log2[inside].mean()), 4),
                         "gain_bits": round(float((lstm_log2[inside] - ngram_log2[inside]).mean()), 4)})
    return rows


def advantage(text: str, lstm_log2: np.ndarray, ngram_log2: np.ndarray, top: int = 15, context: int = 40,
              min_count: int = 20, skip: np.ndarray | None = None) -> dict:
    """lstm_log2 and ngram_log2 (the best n-gram model's), both (time,), for the characters of `text`; `skip`:
    where brackets are not code (inside strings and comments), for closer_distances."""
    gain = lstm_log2 - ngram_log2  # (time,) bits the LSTM saves
    chars = np.array(list(text))
    by_char = []
    for char in np.unique(chars):
        at = chars == char
        by_char.append({"char": str(char), "count": int(at.sum()), "total_gain_bits": round(float(gain[at].sum()), 2),
                        "mean_gain_bits": round(float(gain[at].mean()), 4),
                        "lstm_bits": round(float(-lstm_log2[at].mean()), 4),
                        "ngram_bits": round(float(-ngram_log2[at].mean()), 4)})
    by_char.sort(key=lambda row: -row["total_gain_bits"])
    frequent = [row for row in by_char if row["count"] >= min_count]

    closers = closer_distances(text, skip)
    closer_rows = {}
    for char in sorted({c for _, _, c in closers}):
        picked = np.array([(t, d) for t, d, c in closers if c == char])
        closer_rows[char] = by_distance(picked[:, 0], picked[:, 1], lstm_log2, ngram_log2)
    newlines = np.flatnonzero(chars == "\n")
    previous_newlines = np.concatenate([[-1], newlines[:-1]])  # distance 1 is an empty line

    examples = []
    for t in np.argsort(-gain)[:top]:
        examples.append({"position": int(t), "before": text[max(0, t - context):t], "char": text[t],
                         "lstm_p": round(float(2 ** lstm_log2[t]), 4), "ngram_p": round(float(2 ** ngram_log2[t]), 6),
                         "gain_bits": round(float(gain[t]), 3)})
    return {"mean_gain_bits": round(float(gain.mean()), 4),
            "share_of_characters_lstm_better": round(float((gain > 0).mean()), 4),
            "by_char_total": by_char[:top],
            "by_char_mean": sorted(frequent, key=lambda row: -row["mean_gain_bits"])[:top],
            "closers_by_distance": closer_rows,
            "newline_by_distance": by_distance(newlines, newlines - previous_newlines, lstm_log2, ngram_log2),
            "largest_gains": examples}
