"""Kneser-Ney n-grams: a hand computation, hashed counts against plain counting, and proper distributions."""
import itertools
from collections import Counter, defaultdict

import numpy as np
import pytest

from analysis.ngrams import KneserNey, bits_per_char, modified_discounts


def test_bigram_model_matches_a_hand_computation():
    # Train "abcab", vocabulary a b c d (V = 4), one discount D = 0.5.
    #   unigram counts a2 b2 c1, N = 5, 3 types:      P1(w) = (max(c-D, 0) + D·3·(1/4)) / 5
    #   continuation counts (distinct left chars): a1 (ca) b1 (ab) c1 (bc), 3 bigram types:
    #                                                  Pc(w) = (max(N1+ - D, 0) + D·3·(1/4)) / 3
    #   bigrams ab2 bc1 ca1; contexts a:2 (1 type), b:1, c:1:
    #                                                  P2(w|h) = (max(c(hw)-D, 0) + D·N1+(h•)·Pc(w)) / c(h)
    p1 = {"a": (1.5 + 0.375) / 5, "b": (1.5 + 0.375) / 5, "c": (0.5 + 0.375) / 5, "d": 0.375 / 5}
    pc = {"a": (0.5 + 0.375) / 3, "b": (0.5 + 0.375) / 3, "c": (0.5 + 0.375) / 3, "d": 0.375 / 3}
    text = "abcda"
    expected_bigram = [p1["a"],  # no context at the start: the order-1 model
                       (1.5 + 0.5 * pc["b"]) / 2,  # b | a
                       (0.5 + 0.5 * pc["c"]) / 1,  # c | b
                       (0.0 + 0.5 * pc["d"]) / 1,  # d | c: unseen after c
                       pc["a"]]  # a | d: context never seen, all mass to the continuation unigram
    model = KneserNey("abcab", "abcd", max_order=2, discount=0.5)
    probs = 2 ** model.log2_probs(text)
    np.testing.assert_allclose(probs[0], [p1[c] for c in text], rtol=1e-12)
    np.testing.assert_allclose(probs[1], expected_bigram, rtol=1e-12)
    assert bits_per_char(model.log2_probs(text))[1] == pytest.approx(-np.mean(np.log2(expected_bigram)))


def test_modified_discounts_follow_chen_and_goodman():
    # n1 = 3, n2 = 2, n3 = 1, n4 = 1: Y = 3/7, D1 = 1 - 2Y·2/3, D2 = 2 - 3Y·1/2, D3 = 3 - 4Y·1/1
    d = modified_discounts(np.array([1, 1, 1, 2, 2, 3, 4, 5]))
    np.testing.assert_allclose(d, [0, 3 / 7, 2 - 9 / 14, 3 - 12 / 7])


def test_hashed_counts_equal_plain_counting(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    model = KneserNey(text, sorted(set(text)), max_order=6)
    for k in range(1, 7):
        grams = Counter(text[i:i + k] for i in range(len(text) - k + 1))
        assert sorted(model.raw[k].gram_counts.tolist()) == sorted(grams.values())
        if k < 6:
            left = defaultdict(set)
            for i in range(1, len(text) - k + 1):
                left[text[i:i + k]].add(text[i - 1])
            continuation = sorted(c for c in model.continuation[k].gram_counts.tolist() if c)
            assert continuation == sorted(len(s) for s in left.values())


@pytest.mark.parametrize("discount", [None, 0.75])
def test_every_order_is_a_distribution_over_the_vocabulary(discount):
    train = "the cat sat on the mat. the dog sat on the log.\n" * 3 + "a bat ate a gnat"
    vocab = sorted(set(train) | set("xz"))
    model = KneserNey(train, vocab, max_order=5, discount=discount)
    for context in ["", "t", "the ", "sat o", "zx", "a gn"]:
        totals = np.zeros(5)
        for char in vocab:
            totals += 2 ** model.log2_probs(context + char)[:, -1]
        np.testing.assert_allclose(totals, 1.0, atol=1e-12)


def test_longer_contexts_help_on_real_text_then_level_off(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:60_000]
    train, val = text[:54_000], text[54_000:]
    bpc = bits_per_char(KneserNey(train, sorted(set(text)), max_order=8).log2_probs(val))
    assert bpc[0] > bpc[1] > bpc[2] > bpc[3]  # unigram > bigram > trigram > 4-gram
    assert 1.5 < bpc.min() < 3.0
    assert bpc[7] < bpc[3] + 0.3  # smoothing keeps high orders from falling apart on unseen contexts


def test_characters_outside_the_vocabulary_are_named():
    model = KneserNey("abab", "ab", max_order=2)
    with pytest.raises(ValueError, match="'z'"):
        model.log2_probs("abz")
