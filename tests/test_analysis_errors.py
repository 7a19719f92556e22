"""The error breakdown on texts and probabilities made by hand, so each category's count is known."""
import math

import numpy as np
import pytest

from analysis.errors import CATEGORIES, copy_prediction_right, error_breakdown


def test_copying_the_latest_longest_match_predicts_a_repeated_name():
    text = "Jon yelled at Mary but Mary"
    t = text.rindex("Mary") + 1  # the 'a' of the second Mary: " M" was followed by 'a' before
    assert copy_prediction_right(text, t)
    assert copy_prediction_right(text, t + 2)  # 'y' after "Mar"
    assert not copy_prediction_right("abc xyz abd", 10)  # "ab" was followed by 'c', not 'd'
    assert not copy_prediction_right("qwe rty", 6)  # nothing repeats
    assert not copy_prediction_right("ab" + "x" * 2000 + "ab", 2003)  # the earlier "a" lies beyond 1,000 characters


def test_errors_are_peeled_in_order_and_shares_add_up():
    train = "common common common common common common rare "
    text = "ab common rare, zq"
    n = len(text)
    lstm = np.full(n, math.log2(0.9))  # right everywhere…
    wrong = {0: 0.1,  # 'a' of "ab", never seen in training: a rare word (which comes before word start)
             3: 0.1,  # 'c' of "common": word start, frequent word
             4: 0.1,  # 'o': the n-gram oracle gets it (below)
             10: 0.3,  # 'r' of "rare": a rare word (seen once)
             14: 0.1,  # ',' punctuation
             15: 0.3,  # ' ' boost: 0.3 >= 0.25
             17: 0.1}  # 'q' of "zq" at word position 2: unseen word -> rare word
    for t, p in wrong.items():
        lstm[t] = math.log2(p)
    ngram = np.full((9, n), math.log2(0.1))
    ngram[4, 4] = math.log2(0.6)  # the 5-gram model is sure of 'o'
    ngram[2, 15] = math.log2(0.49)  # below 0.5: no help
    result = error_breakdown(text, lstm, ngram, train)
    counts = {row["category"]: row["errors"] for row in result["categories"]}
    assert result["errors"] == len(wrong) and result["characters"] == n
    assert counts == {"n-gram": 1, "dynamic memory": 0, "rare word": 3, "word start": 1, "punctuation": 1,
                      "boost": 1, "other": 0}
    assert [row["category"] for row in result["categories"]] == [name for name, _ in CATEGORIES]
    assert sum(row["share_of_errors"] for row in result["categories"]) == pytest.approx(1.0, abs=1e-3)


def test_a_probability_of_exactly_one_half_is_not_an_error():
    result = error_breakdown("ab", np.array([-1.0, -1.0]), np.full((9, 2), -5.0), "ab")
    assert result["errors"] == 0 and result["error_rate"] == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        error_breakdown("abc", np.zeros(2), np.zeros((9, 3)), "abc")
