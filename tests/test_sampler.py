"""training/sampler.py: the random numbers behind every seeded draw, against splitmix64 written out in numpy."""
import numpy as np
import tensorflow as tf

from training import sampler

MASK = (1 << 64) - 1


def splitmix64(seed: int, position: int) -> float:
    """The documented number: 24 bits of splitmix64's finaliser of seed + (position + 1) * golden, in (0, 1)."""
    x = (seed + (position + 1) * sampler.GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return ((x >> 40) + 0.5) / (1 << 24)


def test_a_calls_draws_are_each_rows_numbers_from_its_position_on():
    seeds = [0, 1234, -7, 2 ** 62]  # int64, as the signature takes them (negative ones wrap to uint64)
    positions = [0.0, 5.0, 1000.0, 16_000_000.0]
    numbers = sampler.draws(tf.constant(seeds, tf.int64), tf.constant(positions), 20).numpy()  # (steps, batch)
    assert numbers.shape == (20, 4)
    for row, (seed, position) in enumerate(zip(seeds, positions)):
        expected = [splitmix64(seed & MASK, int(position) + i) for i in range(20)]
        np.testing.assert_array_equal(numbers[:, row], np.float32(expected))
        one_at_a_time = [sampler.uniform(tf.constant([seed], tf.int64), tf.constant([position + i]))[0] for i in (0, 19)]
        np.testing.assert_array_equal(np.float32(one_at_a_time), numbers[[0, 19], row])


def test_draw_picks_the_first_character_whose_cumulative_probability_reaches_the_number():
    logits = tf.math.log(tf.constant([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    for u, expected in ((0.3, [0, 2]), (0.6, [1, 2]), (0.9, [2, 2]), (0.15, [0, 1])):
        assert sampler.draw(logits, tf.constant([u, u])).numpy().tolist() == expected
