"""The signatures' declared inputs and the sampling settings that become them."""
import numpy as np
import pytest
from pydantic import ValidationError

from model_interface.signatures import (GENERATE, INPUTS, SAMPLING_INPUTS, SamplingSettings, bounds, fresh_states,
                                        generate_inputs, text_inputs, warmup_calls)


@pytest.mark.parametrize("values, field", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": 101.0}, "temperature"),
    ({"min_p": 1.5}, "min_p"), ({"logprobs": 21}, "logprobs"), ({"logprobs": -1}, "logprobs"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"seed": 2 ** 63}, "seed"), ({"seed": -(2 ** 63) - 1}, "seed"),
    ({"top_k": 1.5}, "top_k"), ({"min_q": 1}, "min_q")])
def test_settings_out_of_bounds_are_refused_naming_the_field(values, field):
    with pytest.raises(ValidationError) as raised:
        SamplingSettings(**values)
    assert raised.value.errors()[0]["loc"][0] == field


def test_bounds_read_as_words():
    assert bounds("top_p") == "in (0, 1]" and bounds("temperature") == "in [0, 100]"
    assert bounds("top_k").startswith("in [0, ")


def test_with_seed_wraps_into_int64():
    settings = SamplingSettings(temperature=0.5, seed=2 ** 63 - 1)
    assert settings.with_seed(2 ** 63).seed == -(2 ** 63) and settings.with_seed(5).temperature == 0.5


def test_generate_inputs_are_the_declared_inputs_in_order_and_dtype():
    settings = [SamplingSettings(temperature=0.5, top_k=3, top_p=0.9, seed=11), SamplingSettings()]
    inputs = generate_inputs(["ab", ""], fresh_states(2, 5), [7, 0], settings)
    assert list(inputs) == [i.name for i in INPUTS[GENERATE]]
    for spec in INPUTS[GENERATE]:
        value = inputs[spec.name]
        assert value.ndim == spec.rank and len(value) == 2
        assert value.dtype == (object if spec.dtype == "string" else np.dtype(spec.dtype)), spec.name
    assert inputs["top_k"].tolist() == [3, 0] and inputs["seed"].tolist() == [11, 0]
    assert inputs["state"].shape == (2, 5)
    assert set(SAMPLING_INPUTS) == set(SamplingSettings.model_fields)


def test_generate_inputs_need_one_of_each_per_row():
    with pytest.raises(ValueError, match="one prompt, state, num_chars and settings per row"):
        generate_inputs(["a", "b"], fresh_states(2), [1], [SamplingSettings()] * 2)


def test_text_inputs_and_warmup_cover_every_signature():
    inputs = text_inputs(["abc"])
    assert inputs["state"].shape == (1, 0) and inputs["text"].dtype == object
    calls = warmup_calls()
    assert {signature for signature, _ in calls} == set(INPUTS)
    for signature, inputs in calls:
        assert set(inputs) == {i.name for i in INPUTS[signature]}
