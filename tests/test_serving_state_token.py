"""The opaque continuation state: round trip, and refusal of anything else."""
import numpy as np
import pytest

from serving.state_token import StateError, decode, encode


def test_round_trip_keeps_every_bit():
    row = np.random.default_rng(0).standard_normal(65).astype(np.float32)
    row[-1] = 123.0
    seed, back = decode(encode("charlm", 3, -(2 ** 63), row), "charlm", 3, 65)
    assert seed == -(2 ** 63) and back.dtype == np.float32 and np.array_equal(back, row)


@pytest.mark.parametrize("token, message", [
    ("", "not a state"), ("a.b.c", "not a state"), ("!!!.???", "not a state"),
    (encode("charlm", 3, 1, np.zeros(65, np.float32))[:-4], "holds"),
    (encode("other", 3, 1, np.zeros(65, np.float32)), "belongs to other version 3"),
    (encode("charlm", 2, 1, np.zeros(65, np.float32)), "version 2"),
    (encode("charlm", 3, 1, np.zeros(64, np.float32)), "holds 64 numbers"),
    (encode("charlm", 3, 1, np.array([np.inf] * 65, np.float32)), "invalid numbers"),
    (encode("charlm", 3, 1, np.array([0.0] * 64 + [-1.0], np.float32)), "invalid numbers"),
])
def test_anything_else_is_refused_with_a_reason(token, message):
    with pytest.raises(StateError, match=message):
        decode(token, "charlm", 3, 65)
