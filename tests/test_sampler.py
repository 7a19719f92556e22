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


def settings(rows, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, vocab_size=4):
    full = lambda v, dtype=tf.float32: tf.constant([v] * rows, dtype)
    return sampler.prepare(full(temperature), full(top_k, tf.int32), full(top_p), full(min_p), vocab_size)


def pick(probs, u, processed=False, **kw):
    logits = tf.math.log(tf.constant(probs))
    temperature = tf.constant([kw.get("temperature", 1.0)] * len(probs))
    u = sampler.step_numbers(tf.constant([[u] * len(probs)]), temperature)[0]  # (rows, 1)
    ids, chosen, _, _ = sampler.next_chars(logits, settings(len(probs), **kw), u, processed, 2)
    return ids.numpy().tolist()


def test_the_draw_walks_the_characters_likeliest_first():
    # Ranked: row 0 is 0 (0.4), 3 (0.3), 1 and 2 (0.15 each, vocabulary order); row 1 is 2 (0.7), 1, 0, 3.
    probs = [[0.4, 0.15, 0.15, 0.3], [0.1, 0.15, 0.7, 0.05]]
    for u, expected in ((0.2, [0, 2]), (0.5, [3, 2]), (0.75, [1, 1]), (0.9, [2, 0]), (0.99, [2, 3])):
        assert pick(probs, u) == expected
        assert pick(probs, u, processed=True) == expected  # filters that keep everything change nothing


def test_filters_keep_a_prefix_of_the_ranking_and_the_draw_spreads_over_it():
    probs = [[0.4, 0.15, 0.15, 0.3]]
    assert pick(probs, 0.9, processed=True, top_k=2) == [3]  # 0 and 3 left: 0.9 of their 0.7 falls on 3
    assert pick(probs, 0.5, processed=True, top_k=2) == [0]
    assert pick(probs, 0.9, processed=True, top_p=0.5) == [3]  # 0.4 before 3 is below 0.5: 3 stays, 1 does not
    assert pick(probs, 0.9, processed=True, top_p=0.4) == [0]  # only the likeliest has less than 0.4 before it
    assert pick(probs, 0.9, processed=True, min_p=0.5) == [3]  # 0.3 / 0.4 >= 0.5; 0.15 / 0.4 is not
    assert pick(probs, 0.99, processed=True, min_p=1.0) == [0]
    # top_k 3 keeps 0.85; top-p is of that: 0.7 before 1 is below 0.85 * 0.85, not below 0.8 * 0.85
    assert pick(probs, 0.99, processed=True, top_k=3, top_p=0.85) == [1]
    assert pick(probs, 0.99, processed=True, top_k=3, top_p=0.8) == [3]
    assert pick(probs, 0.99, processed=True, temperature=0.0) == [0]  # greedy (a number of 0, step_numbers)


def test_greedy_rows_draw_zero_and_the_others_keep_their_numbers():
    numbers = sampler.step_numbers(tf.constant([[0.5, 0.25], [0.75, 0.125]]), tf.constant([0.0, 0.7]))
    assert numbers.shape == (2, 2, 1)
    assert numbers[..., 0].numpy().tolist() == [[0.0, 0.25], [0.0, 0.125]]
