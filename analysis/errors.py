"""The LSTM's errors, broken down in the manner of the paper's Section 4.4.

As in the paper, a character is an error when the model gave it a probability below 0.5. Errors are peeled
off category by category, in this order, each error going to the first category that explains it:

1. n-gram: some n-gram model of order 1 … 9 gives the character at least 0.5 (the paper's "n-gram oracle":
   the LSTM failed where a short fixed context would have sufficed).
2. dynamic memory: copying from the last 1,000 characters would have been right: the longest string ending
   just before the character that also occurs there (at least 3 characters long) was followed, at its latest
   occurrence, by this very character (a name or word the text has just used).
3. rare word: the character is inside a word seen at most 5 times in the training text.
4. word start: the first character of a word (the paper's "word model" errors: choosing the next word).
5. punctuation: neither a letter, digit, underscore nor whitespace.
6. boost: the model gave the character at least 0.25 — within a factor of 2 of counting as right.
7. other.

The first four categories follow the paper's definitions in spirit; the exact thresholds (1,000 characters,
3-character matches, 5 occurrences, 0.25) are this module's, stated here and in the report.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

ERROR_BELOW = 0.5  # the paper's threshold
ORACLE_ORDERS = 9  # n-gram models of order 1 … 9 make the oracle
MEMORY_WINDOW = 1000
MEMORY_MIN_MATCH = 3
MEMORY_MAX_MATCH = 40
RARE_WORD_COUNT = 5
BOOST_ABOVE = 0.25
WORD = re.compile(r"\w+")

CATEGORIES = (
    ("n-gram", f"an n-gram model of order 1–{ORACLE_ORDERS} gives it ≥ {ERROR_BELOW}"),
    ("dynamic memory", f"copying the continuation of the longest recent match (≥ {MEMORY_MIN_MATCH} chars, "
                       f"last {MEMORY_WINDOW:,} chars) gives it"),
    ("rare word", f"inside a word seen ≤ {RARE_WORD_COUNT} times in training"),
    ("word start", "the first character of a word"),
    ("punctuation", "not a letter, digit, underscore or whitespace"),
    ("boost", f"the LSTM gave it ≥ {BOOST_ABOVE} (a ×2 boost would fix it)"),
    ("other", "none of the above"),
)


def copy_prediction_right(text: str, t: int, window: int = MEMORY_WINDOW) -> bool:
    """Would copying from the last `window` characters predict text[t]? Find the longest string ending at t-1
    that also occurs earlier in the window, and check the character after its latest earlier occurrence."""
    lo = max(0, t - window)
    found_at, length = -1, 0
    for n in range(MEMORY_MIN_MATCH, min(MEMORY_MAX_MATCH, t - lo - 1) + 1):
        # An earlier occurrence ends at t-2 or before, so the character after it is still before t.
        at = text.rfind(text[t - n:t], lo, t - 1)
        if at < 0:
            break  # a longer string cannot occur where this one does not
        found_at, length = at, n
    return found_at >= 0 and text[found_at + length] == text[t]


def word_spans(text: str) -> np.ndarray:
    """(time,) for each character, the index of the word it is in (-1 outside words), and the words."""
    owner = np.full(len(text), -1)
    words = []
    for i, match in enumerate(WORD.finditer(text)):
        owner[match.start():match.end()] = i
        words.append(match.group())
    return owner, words


def category_masks(text: str, lstm_log2: np.ndarray, ngram_log2: np.ndarray, train_text: str) -> dict[str, np.ndarray]:
    """{category: (time,) bool}, before peeling (a character may fit several)."""
    oracle = ngram_log2[:ORACLE_ORDERS].max(axis=0) >= math.log2(ERROR_BELOW)
    errors = lstm_log2 < math.log2(ERROR_BELOW)
    memory = np.zeros(len(text), bool)
    for t in np.flatnonzero(errors & ~oracle):  # only where it can matter: the search is the slow part
        memory[t] = copy_prediction_right(text, int(t))
    owner, words = word_spans(text)
    train_counts = Counter(WORD.findall(train_text))
    rare_word = np.array([train_counts[w] <= RARE_WORD_COUNT for w in words] + [False])[owner]  # -1 -> False
    is_word = owner >= 0
    word_start = is_word & ~np.concatenate([[False], is_word[:-1]])
    punctuation = np.array([not (c.isalnum() or c == "_" or c.isspace()) for c in text], bool)
    boost = lstm_log2 >= math.log2(BOOST_ABOVE)
    return {"n-gram": oracle, "dynamic memory": memory, "rare word": rare_word, "word start": word_start,
            "punctuation": punctuation, "boost": boost, "other": np.ones(len(text), bool)}


def error_breakdown(text: str, lstm_log2: np.ndarray, ngram_log2: np.ndarray, train_text: str) -> dict:
    """text and its per-character log2 probabilities, the LSTM's (time,) and the n-gram models' (orders, time)."""
    if not (len(text) == len(lstm_log2) == ngram_log2.shape[1]):
        raise ValueError("text, LSTM and n-gram probabilities must cover the same characters")
    errors = lstm_log2 < math.log2(ERROR_BELOW)
    masks = category_masks(text, lstm_log2, ngram_log2, train_text)
    remaining = errors.copy()
    rows = []
    for name, description in CATEGORIES:
        taken = remaining & masks[name]
        remaining &= ~taken
        rows.append({"category": name, "definition": description, "errors": int(taken.sum()),
                     "share_of_errors": round(float(taken.sum() / max(1, errors.sum())), 4)})
    return {"characters": len(text), "errors": int(errors.sum()),
            "error_rate": round(float(errors.mean()) if len(text) else 0.0, 4),
            "oracle_orders": ORACLE_ORDERS, "categories": rows}
