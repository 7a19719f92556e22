"""Where the LSTM beats the n-gram model: closers matched to openers, gains bucketed by distance and character."""
import numpy as np
import pytest

from analysis.advantage import advantage, closer_distances


def test_closers_are_matched_to_their_own_openers_and_quotes_pair_up():
    text = 'f(a[b]) ] "xy" "z'
    #        0123456789012345 6
    assert closer_distances(text) == [(5, 2, "]"), (6, 5, ")"), (13, 3, '"')]  # the stray ']' and open '"' have none


def test_gains_by_character_and_by_distance():
    text = "(" + "a" * 30 + ")\n(a)\n"
    n = len(text)
    lstm = np.full(n, -1.0)
    ngram = np.full(n, -1.0)
    far_close, near_close = 31, text.index("(a)") + 2
    lstm[far_close], ngram[far_close] = -0.5, -6.5  # the LSTM saves 6 bits on the far ')'
    lstm[near_close], ngram[near_close] = -2.0, -1.0  # and loses 1 on the near one
    result = advantage(text, lstm, ngram, top=3, min_count=1)
    assert result["by_char_total"][0] == {"char": ")", "count": 2, "total_gain_bits": 5.0, "mean_gain_bits": 2.5,
                                          "lstm_bits": 1.25, "ngram_bits": 3.75}
    rows = {row["distance"]: row for row in result["closers_by_distance"][")"]}
    assert rows["1-5"]["gain_bits"] == -1.0 and rows["1-5"]["count"] == 1
    assert rows["21-50"]["gain_bits"] == 6.0  # distance 30
    newline_rows = {row["distance"]: row["count"] for row in result["newline_by_distance"]}
    assert newline_rows == {"21-50": 1, "1-5": 1}  # the first line is 32 characters, the second 3
    assert result["largest_gains"][0]["position"] == far_close
    assert result["largest_gains"][0]["before"].endswith("a" * 30)
    assert result["mean_gain_bits"] == pytest.approx(5.0 / n, abs=1e-4)


def test_in_code_braces_inside_comments_and_literals_do_not_pair():
    from analysis.features import strings_and_comments

    text = "{'}'/*{*/}"
    #        0 1 2 3 4 5 6 7 8 9
    skip = np.maximum(*strings_and_comments(text, "c"))
    assert skip.tolist() == [0, 1, 1, 0, 1, 1, 1, 1, 0, 0]
    assert closer_distances(text, skip) == [(9, 9, "}")]  # the real '}' closes the real '{'
    assert closer_distances(text) == [(2, 2, "}"), (9, 3, "}")]  # character by character they pair wrongly


def test_far_braces_get_buckets_of_their_own():
    text = "{" + "x" * 600 + "}" + "{" + "x" * 2000 + "}"
    gain = advantage(text, np.zeros(len(text)), np.full(len(text), -1.0), min_count=1)
    rows = gain["closers_by_distance"]["}"]
    assert [(r["distance"], r["count"]) for r in rows] == [("501-1000", 1), ("1001+", 1)]
    assert all(r["gain_bits"] == 1.0 for r in rows)


def test_the_long_range_figure_draws_newlines_and_braces():
    from analysis.figures import long_range

    text = "{\n" + "a" * 30 + "\n}\n{b}\n"
    gain = advantage(text, np.full(len(text), -1.0), np.full(len(text), -2.0), min_count=1)
    assert set(gain["closers_by_distance"]) == {"}"}
    assert long_range(gain)[:8] == b"\x89PNG\r\n\x1a\n"
