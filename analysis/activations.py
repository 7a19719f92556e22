"""Per-character activations of every layer for a text, through the model's `activations` signature.

The paper looks at tanh(c) (a cell's value, in (-1, 1)), h, and the input, forget and output gates; the
signature gives c rather than tanh(c), so tanh is applied here, once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from analysis.exported import run_text
from model_interface.client import ModelClient
from model_interface.signatures import ACTIVATIONS

LSTM_OUTPUTS = ("cell", "hidden", "input_gate", "forget_gate", "output_gate")


def text_activations(client: ModelClient, text: str, start: int = 0, end: int | None = None, regions: int = 1,
                     chunk_chars: int = 2000,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """{"tanh_cell", "hidden", "input_gate", "forget_gate", "output_gate"}: each (time, layers, hidden) float32
    for the characters of text[start:end]; a GRU or plain RNN model has only "hidden".

    One continuous pass by default: a cell that counts quotes or brackets from the start of the text is only
    right if the model has read all of it (each of several regions would start from a 256-character prime).
    """
    outputs = LSTM_OUTPUTS if client.metadata.cell == "lstm" else ("hidden",)
    values = run_text(client, ACTIVATIONS, text, outputs, start, end, regions, chunk_chars, progress=progress)
    if "cell" in values:
        values["tanh_cell"] = np.tanh(values.pop("cell"))  # (time, layers, hidden)
    return values
