"""The signatures of an exported version: names, inputs (dtype and meaning), outputs, and the sampling settings.

This module is the only place the input names and the sampling bounds are written: the graph takes its input
signatures from `tensor_specs`, its argument checks from the bounds below, the gateway's request schemas and
the `sample` CLI validate through `SamplingSettings`, and every caller builds `generate`'s inputs with
`generate_inputs`. docs/model-signatures.md describes them for people.

Conventions: the batch is the first dimension of every input (TF Serving and the gateway stack requests);
text goes in and out as UTF-8 `tf.string`; the recurrent `state` goes in and comes out of every call as
float32 [batch, state_size], or [batch, 0] for a fresh start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

GENERATE, SCORE, ACTIVATIONS, METADATA = "generate", "score", "activations", "metadata"
SIGNATURES = (GENERATE, SCORE, ACTIVATIONS, METADATA)
SERVING_DEFAULT = "serving_default"  # TF Serving's default signature: `generate`

MAX_CHARS_PER_CALL = 4096  # characters one `generate` call produces per row; longer texts carry the state

# --- the sampling settings' bounds --------------------------------------------------------------------------
INT64 = 2 ** 63
MAX_TEMPERATURE = 100.0  # above this every character is equally likely to float32 precision
MAX_TOP_K = 1 << 20  # any k at or above the vocabulary size means "all"; this bound only keeps int32 sane
MAX_LOGPROBS = 20  # alternatives per character, as OpenAI's legacy completions allow

Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                     description="0 is greedy (the likeliest character); 1 is the model's own "
                                                 "distribution; lower is more conservative")]
TopK = Annotated[int, Field(ge=0, le=MAX_TOP_K, description="keep the k likeliest characters; 0 = off")]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False,
                              description="nucleus sampling: keep the likeliest characters whose mass reaches p; in (0, 1]")]
MinP = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False,
                              description="keep characters at least min_p times as likely as the likeliest; 0 = off")]
Logprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS,
                                description=f"how many likeliest alternatives to report per character (0 ... {MAX_LOGPROBS})")]
Seed = Annotated[int, Field(ge=-INT64, lt=INT64, description="the random stream; same seed, same text")]


class SamplingSettings(BaseModel):
    """How one row samples. Temperature (0: greedy), then top-k, then top-p, then min-p, then one uniform number
    keyed by (seed, position in the state): a seeded row's text never depends on its batch-mates or on
    chunking. `logprobs` asks for that many alternatives per generated character; it never changes the text."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    min_p: MinP = 0.0
    logprobs: Logprobs = 0
    seed: Seed = 0

    def with_seed(self, seed: int) -> "SamplingSettings":
        """The same settings on another random stream (wrapped into int64, as choice i of a request uses seed + i)."""
        return self.model_copy(update={"seed": (int(seed) + INT64) % (2 * INT64) - INT64})


def bounds(name: str) -> str:
    """A sampling setting's bounds in words, for messages: "in (0, 1]", "in [0, 1048576]"."""
    low = high = None
    for rule in SamplingSettings.model_fields[name].metadata:
        for attr, bracket in (("gt", "("), ("ge", "[")):
            if getattr(rule, attr, None) is not None:
                low = f"{bracket}{getattr(rule, attr):g}" if isinstance(getattr(rule, attr), float) else f"{bracket}{getattr(rule, attr)}"
        for attr, bracket in (("lt", ")"), ("le", "]")):
            if getattr(rule, attr, None) is not None:
                value = getattr(rule, attr)
                high = f"{value:g}{bracket}" if isinstance(value, float) else f"{value}{bracket}"
    return f"in {low or '(-inf'}, {high or 'inf)'}"


# --- inputs and outputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    name: str
    dtype: str  # numpy / TensorFlow dtype name
    rank: int  # 1: [batch]; 2: [batch, n]
    meaning: str


STATE = Input("state", "float32", 2, "float32 [batch, state_size], or [batch, 0] to start a fresh text")
TEXT = Input("text", "string", 1, "UTF-8 text to read")
INPUTS: dict[str, tuple[Input, ...]] = {
    GENERATE: (
        Input("prompt", "string", 1, "text to consume first (may be empty)"),
        STATE,
        Input("num_chars", "int32", 1, f"characters to generate for this row (0 ... {MAX_CHARS_PER_CALL} per call)"),
        # The sampling settings, one input per SamplingSettings field, in its order.
        Input("temperature", "float32", 1, "in [0, 100]; 0 = greedy"),
        Input("top_k", "int32", 1, "keep the k likeliest characters; 0 = off"),
        Input("top_p", "float32", 1, "nucleus mass, in (0, 1]"),
        Input("min_p", "float32", 1, "keep characters at least min_p times as likely as the likeliest; 0 = off"),
        Input("logprobs", "int32", 1, f"alternatives to report per generated character, 0 ... {MAX_LOGPROBS}"),
        Input("seed", "int64", 1, "the row's random stream"),
    ),
    SCORE: (TEXT, STATE),
    ACTIVATIONS: (TEXT, STATE),
    METADATA: (Input("request", "int32", 1, "any values; one row per answer"),),
}
OUTPUTS: dict[str, tuple[str, ...]] = {
    # log_probs: each generated (or scored) character's, from the model's own distribution; top_ids and
    # top_log_probs: the likeliest characters before each one (min(20, vocab) of them; -1 and 0 past the end
    # and, in generate, beyond the row's `logprobs`).
    GENERATE: ("text", "state", "unknown_chars", "log_probs", "top_ids", "top_log_probs"),
    SCORE: ("log_probs", "lengths", "bits_per_char", "state", "unknown_chars", "top_ids", "top_log_probs"),
    ACTIVATIONS: ("hidden", "cell", "input_gate", "forget_gate", "cell_candidate", "output_gate", "lengths", "state",
                  "unknown_chars"),  # cell and the gates: LSTM models only
    METADATA: ("vocab", "info", "state_size"),
}
SAMPLING_INPUTS = tuple(SamplingSettings.model_fields)  # generate's inputs that come from SamplingSettings
assert set(SAMPLING_INPUTS) <= {i.name for i in INPUTS[GENERATE]}, "every sampling setting is a generate input"


def tensor_specs(signature: str) -> list:
    """The tf.TensorSpecs of a signature's inputs, in order, for the graph's @tf.function input_signature."""
    import tensorflow as tf

    return [tf.TensorSpec([None] * spec.rank, tf.as_dtype(spec.dtype), name=spec.name) for spec in INPUTS[signature]]


def numpy_dtype(spec: Input):
    return object if spec.dtype == "string" else np.dtype(spec.dtype)


def fresh_states(batch: int, width: int = 0) -> np.ndarray:
    """States for rows starting a new text: [batch, 0], or zeros at full width (what the gateway sends, so TF
    Serving's batching can stack its calls with any other call of the same model)."""
    return np.zeros([batch, width], np.float32)


def generate_inputs(prompts: Sequence[str], states: np.ndarray, num_chars: Sequence[int],
                    settings: Sequence[SamplingSettings]) -> dict[str, np.ndarray]:
    """`generate`'s inputs for a batch: one prompt, state row, character count and SamplingSettings per row."""
    if not len(prompts) == len(states) == len(num_chars) == len(settings):
        raise ValueError(f"one prompt, state, num_chars and settings per row; got {len(prompts)}, {len(states)}, "
                         f"{len(num_chars)}, {len(settings)}")
    columns = {"prompt": list(prompts), "state": states, "num_chars": list(num_chars),
               **{name: [getattr(s, name) for s in settings] for name in SAMPLING_INPUTS}}
    return {spec.name: np.asarray(columns[spec.name], numpy_dtype(spec)) for spec in INPUTS[GENERATE]}


def text_inputs(texts: Sequence[str], states: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`score`'s and `activations`' inputs: texts and their states (a fresh start if None)."""
    states = fresh_states(len(texts)) if states is None else np.asarray(states, np.float32)
    return {"text": np.asarray(list(texts), object), "state": states}


def metadata_inputs() -> dict[str, np.ndarray]:
    return {"request": np.zeros([1], np.int32)}


def warmup_calls(batches: Sequence[int] = (1, 8)) -> list[tuple[str, dict[str, np.ndarray]]]:
    """One call of every signature per batch size: the first call of each pays for graph optimisation. TF
    Serving replays these from assets.extra at load (--enable_model_warmup); in-process callers run them."""
    calls = [(METADATA, metadata_inputs())]
    for batch in batches:
        calls.append((GENERATE, generate_inputs(["\n"] * batch, fresh_states(batch), [8] * batch,
                                                [SamplingSettings(seed=i) for i in range(batch)])))
        calls.append((SCORE, text_inputs(["\n"] * batch)))
        calls.append((ACTIVATIONS, text_inputs(["\n"] * batch)))
    return calls
