"""Per-character log probabilities of a text under an exported model, through its `score` signature."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from analysis.exported import run_text
from model_interface.client import ModelClient
from model_interface.signatures import SCORE


def log2_probs(client: ModelClient, text: str, start: int = 0, end: int | None = None, regions: int = 16,
               chunk_chars: int = 2000, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(time,) log2 of the probability the model gave each character of text[start:end], given all before it.

    Many regions side by side keep the batch wide, which is what makes scoring a long split fast on a CPU.
    """
    out = run_text(client, SCORE, text, ("log_probs",), start, end, regions, chunk_chars, progress=progress)
    return out["log_probs"].astype(np.float64) / math.log(2.0)  # the signature gives natural logs


def bits_per_char(log2_p: np.ndarray) -> float:
    return float(-np.mean(log2_p))
