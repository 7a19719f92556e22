"""Character n-gram baselines for n = 1 … 20 (the paper's Table 2), interpolated modified Kneser-Ney.

Why Kneser-Ney: it is the smoothing that held-out comparisons (Chen & Goodman, 1998) found best, and what
SRILM and KenLM build by default, so "the n-gram baseline" means a strong one. Its two ideas both matter for
characters: absolute discounting (three discounts per order, for counts 1, 2 and 3+, estimated from the
count-of-counts) takes mass from seen continuations in proportion to how varied the context is; and the
lower orders are fitted to *continuation* counts — in how many distinct contexts a string appears, not how
often — because a lower order only speaks when the longer context is new, and then "after how many different
characters does 'k' follow 'ng'?" is the question. Witten-Bell (PPM-C) needs no discount estimate but loses to
Kneser-Ney on held-out text; with hashed counts both cost the same, so there was no reason to take the weaker.

The model of order n interpolates all orders 1 … n: order n from raw counts, orders below from continuation
counts, order 0 uniform over the vocabulary, so every vocabulary character gets a probability. An unseen
context passes its whole mass to the order below.

Counting is numpy, not dicts: every k-gram of the text is a 64-bit hash built from its first k-1 characters'
hash and its last character, so all k-grams of one order are one array, counted by np.unique; the context of
a k-gram and its suffix are the (k-1)-gram hashes at the same start and one later. Collisions between two of
a million hashes of one order have odds of about 1e-8 per order. Evaluation looks every position's k-gram up
in the sorted hashes with np.searchsorted, one order at a time: O(N·n) work, vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MAX_ORDER = 20
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 in, well-mixed uint64 out (a bijection)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def extend(prefix_keys: np.ndarray, last_ids: np.ndarray) -> np.ndarray:
    """Hashes of k-grams from the hashes of their first k-1 characters and the ids of their last one."""
    with np.errstate(over="ignore"):
        return mix(prefix_keys * GOLDEN + (last_ids.astype(np.uint64) + np.uint64(1)))


def gram_keys(ids: np.ndarray, max_order: int):
    """Yields (k, keys of every k-gram by start position (N-k+1,)) for k = 0 … max_order; the 0-gram (the
    empty context) hashes to 0 everywhere."""
    keys = np.zeros(len(ids) + 1, np.uint64)
    yield 0, keys
    for k in range(1, max_order + 1):
        if len(ids) < k:
            return
        keys = extend(keys[:len(ids) - k + 1], ids[k - 1:])
        yield k, keys


def lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), values.dtype)
    at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == queries, values[at], 0)


def modified_discounts(counts: np.ndarray) -> np.ndarray:
    """(D for count 0, 1, 2, 3+) from the count-of-counts, Chen & Goodman's estimates, each clamped to
    [0, its count] so a discounted count never goes negative."""
    n1, n2, n3, n4 = (int((counts == r).sum()) for r in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5
    d1 = y if n1 else 0.5  # = 1 - 2y·n2/n1
    d2 = 2 - 3 * y * n3 / n2 if n2 else d1
    d3 = 3 - 4 * y * n4 / n3 if n3 else d2
    return np.array([0.0, min(max(d1, 0.0), 1.0), min(max(d2, 0.0), 2.0), min(max(d3, 0.0), 3.0)])


@dataclass
class Counts:
    """One order's counts, either raw c(h w) or continuation N1+(• h w), grouped by context h."""

    gram_keys: np.ndarray  # (grams,) sorted
    gram_counts: np.ndarray  # (grams,)
    context_keys: np.ndarray  # (contexts,) sorted
    context_totals: np.ndarray  # (contexts,) sum of the counts of the context's grams
    context_backoff: np.ndarray  # (contexts,) D1·N1(h•) + D2·N2(h•) + D3·N3+(h•): the mass handed down
    discounts: np.ndarray  # (4,) for counts 0, 1, 2, 3+

    @classmethod
    def group(cls, gram_keys, gram_counts, context_of_gram, discount: float | None) -> "Counts":
        discounts = modified_discounts(gram_counts) if discount is None else \
            np.array([0.0, min(discount, 1.0), min(discount, 2.0), min(discount, 3.0)])
        seen = gram_counts > 0  # a gram seen only at the very start of the text has no continuation
        context_keys, inverse = np.unique(context_of_gram[seen], return_inverse=True)
        counts = gram_counts[seen]
        totals = np.bincount(inverse, weights=counts, minlength=len(context_keys))
        backoff = np.bincount(inverse, weights=discounts[np.minimum(counts, 3)], minlength=len(context_keys))
        return cls(gram_keys, gram_counts, context_keys, totals, backoff, discounts)

    def probability(self, grams: np.ndarray, contexts: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P(w | h) for each position's gram hw and context h, interpolated with the lower order's P."""
        count = lookup(self.gram_keys, self.gram_counts, grams)
        total = lookup(self.context_keys, self.context_totals, contexts)
        backoff = lookup(self.context_keys, self.context_backoff, contexts)
        kept = np.maximum(count - self.discounts[np.minimum(count, 3)], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (kept + backoff * lower) / total, lower)


class KneserNey:
    """All orders 1 … max_order counted once; `log2_probs` evaluates the models of every order together."""

    def __init__(self, train: str, vocab: Sequence[str], max_order: int = MAX_ORDER, discount: float | None = None,
                 progress: Callable[[int, int], None] | None = None):
        """`discount` fixes one absolute discount for every order and count (plain interpolated Kneser-Ney,
        for checking by hand); None estimates modified Kneser-Ney's three per order."""
        self.vocab = tuple(vocab)
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.max_order = max_order
        ids = self.encode(train)
        self.raw: list[Counts | None] = [None] * (max_order + 1)  # by order; [0] unused
        self.continuation: list[Counts | None] = [None] * (max_order + 1)
        # From the previous order: its hashes by start position, its sorted unique grams, where each first
        # occurs, and the hashes of its own contexts (the order before it).
        previous_keys = previous_unique = previous_first = previous_context_keys = None
        for k, keys in gram_keys(ids, max_order):
            if k > 0:
                unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
                self.raw[k] = Counts.group(unique, counts, previous_keys[first], discount)
                if k >= 2:
                    # N1+(• s) for each (k-1)-gram s: how many distinct k-grams end with it (the k-gram
                    # starting at i ends with the (k-1)-gram starting at i+1).
                    suffixes, distinct_left = np.unique(previous_keys[first + 1], return_counts=True)
                    self.continuation[k - 1] = Counts.group(previous_unique, lookup(suffixes, distinct_left, previous_unique),
                                                            previous_context_keys[previous_first], discount)
                previous_unique, previous_first, previous_context_keys = unique, first, previous_keys
                if progress:
                    progress(k, max_order)
            previous_keys = keys
        self.orders = max(k for k in range(max_order + 1) if k == 0 or self.raw[k] is not None)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"characters outside the n-gram vocabulary: {''.join(unknown)[:80]!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def log2_probs(self, text: str) -> np.ndarray:
        """(orders, time): row n-1 is log2 P(char t | the n-1 characters before it) under the order-n model.

        Contexts are taken from `text` alone, so its first characters have shorter ones (the order-n model
        uses order t+1 at position t < n-1), as a recurrent model starting fresh on the text would.
        """
        ids = self.encode(text)
        steps = len(ids)
        lower = np.full(steps, 1.0 / len(self.vocab))  # order 0: uniform over the vocabulary
        by_order = np.ones((self.orders, steps))  # the model of each order, where its full context exists
        context_keys = None
        for k, keys in gram_keys(ids, self.orders):
            if k == 0:
                context_keys = keys
                continue
            # Position t's k-gram starts at t-k+1; positions t < k-1 have no full context of this order.
            grams, contexts = keys, context_keys[:len(keys)]
            top = lower.copy()
            top[k - 1:] = self.raw[k].probability(grams, contexts, lower[k - 1:])
            by_order[k - 1] = top
            if k < self.orders:
                continued = lower.copy()
                continued[k - 1:] = self.continuation[k].probability(grams, contexts, lower[k - 1:])
                lower = continued
            context_keys = keys
        # The order-n model at position t < n-1 has only t characters of context: order t+1's probability.
        probs = by_order.copy()
        for n in range(2, self.orders + 1):
            short = min(n - 1, steps)
            probs[n - 1, :short] = by_order[np.arange(short), np.arange(short)]
        return np.log2(probs)


def bits_per_char(log2_p: np.ndarray) -> np.ndarray:
    """(orders, time) -> (orders,) bits per character."""
    return -log2_p.mean(axis=-1)
