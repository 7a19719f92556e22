"""Gate saturation (the paper's Figure 3): how often each gate unit sits near 0 or near 1.

A gate below 0.1 is left-saturated (the gate is shut: forget gate erasing, input gate ignoring, output gate
hiding); above 0.9 right-saturated (wide open). The paper found forget gates that stay right-saturated for
most of the text — cells that remember across long spans — in the higher layers, and few saturated gates in
the first layer.
"""
from __future__ import annotations

import numpy as np

LEFT, RIGHT = 0.1, 0.9
GATES = ("input_gate", "forget_gate", "output_gate")
MOSTLY = 0.5  # a unit saturated more than half the time counts as a saturated unit in the summary


def saturation(gates: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{gate: (time, layers, hidden)} -> {gate: {"left": (layers, hidden), "right": (layers, hidden)}}: per unit,
    the fraction of characters with the gate below 0.1 and above 0.9."""
    return {name: {"left": (values < LEFT).mean(axis=0), "right": (values > RIGHT).mean(axis=0)}
            for name, values in gates.items()}


def summarise(fractions: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """One row per layer and gate: mean fractions, and how many units are saturated most of the time."""
    rows = []
    for name, sides in fractions.items():
        for layer in range(sides["left"].shape[0]):
            left, right = sides["left"][layer], sides["right"][layer]
            rows.append({"layer": layer, "gate": name, "units": int(left.size),
                         "mean_left": round(float(left.mean()), 4), "mean_right": round(float(right.mean()), 4),
                         "units_mostly_left": int((left > MOSTLY).sum()),
                         "units_mostly_right": int((right > MOSTLY).sum()),
                         "units_never_saturated": int(((left + right) < 0.01).sum())})
    return rows
