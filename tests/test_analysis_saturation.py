"""Gate saturation on activations whose answer is known by construction."""
import numpy as np

from analysis.saturation import saturation, summarise


def test_fractions_left_and_right_per_unit_and_layer():
    steps = 10
    gate = np.full((steps, 2, 3), 0.5)  # (time, layers, hidden)
    gate[:, 0, 0] = 0.95  # always open
    gate[:7, 0, 1] = 0.05  # shut 70% of the time, half-way otherwise
    gate[:, 1, 2] = [0.0, 1.0] * 5  # half shut, half open
    gate[0, 1, 0] = 0.1  # exactly at a threshold is not saturated
    gate[1, 1, 0] = 0.9
    fractions = saturation({"forget_gate": gate})["forget_gate"]
    np.testing.assert_allclose(fractions["left"], [[0.0, 0.7, 0.0], [0.0, 0.0, 0.5]])
    np.testing.assert_allclose(fractions["right"], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]])


def test_summary_counts_units_saturated_most_of_the_time():
    gate = np.full((4, 1, 4), 0.5)
    gate[:, 0, 0] = 0.99
    gate[:3, 0, 1] = 0.01
    gate[:2, 0, 2] = 0.99  # exactly half the time: not "mostly"
    rows = summarise(saturation({"input_gate": gate}))
    assert rows == [{"layer": 0, "gate": "input_gate", "units": 4, "mean_left": 0.1875, "mean_right": 0.375,
                     "units_mostly_left": 1, "units_mostly_right": 1, "units_never_saturated": 1}]
