"""Request parsing: strict types, OpenAI's null-means-default, limits from the settings, neutral-only params."""
import pytest

from serving.errors import APIError
from serving.schemas import CompletionRequest, GenerateRequest, parse, where
from serving.settings import Settings

SETTINGS = Settings(model_dir="unused", max_tokens=100, max_n=3, max_prompt_chars=10)


def parsed(model, body: str):
    return parse(model, body.encode(), SETTINGS)


def refused(model, body: str) -> APIError:
    with pytest.raises(APIError) as raised:
        parsed(model, body)
    assert raised.value.status == 400
    return raised.value


def test_nulls_take_the_defaults():
    request = parsed(CompletionRequest, '{"model": "m", "max_tokens": null, "n": null, "temperature": null}')
    assert (request.max_tokens, request.n, request.temperature, request.prompts) == (16, 1, 1.0, [""])


def test_types_are_strict():
    assert refused(CompletionRequest, '{"model": "m", "max_tokens": true}').param == "max_tokens"
    assert refused(CompletionRequest, '{"model": "m", "max_tokens": "5"}').param == "max_tokens"
    assert refused(CompletionRequest, '{"model": 5}').param == "model"
    assert parsed(CompletionRequest, '{"model": "m", "temperature": 1}').temperature == 1.0  # an int is a float


def test_limits_come_from_the_settings():
    assert "at most 100" in refused(CompletionRequest, '{"model": "m", "max_tokens": 101}').message
    assert "at most 3" in refused(CompletionRequest, '{"model": "m", "n": 4}').message
    assert refused(GenerateRequest, '{"prompt": "12345678901"}').param == "prompt"
    assert refused(CompletionRequest, '{"model": "m", "prompt": ["ok", "12345678901"]}').param == "prompt"
    assert parsed(GenerateRequest, '{"max_chars": 100, "prompt": "1234567890"}').max_chars == 100


def test_neutral_values_of_unsupported_parameters_are_accepted():
    request = parsed(CompletionRequest, '{"model": "m", "n": 2, "best_of": 2, "presence_penalty": 0, '
                                        '"frequency_penalty": 0.0, "logit_bias": {}, "suffix": null, "logprobs": null}')
    assert request.n == 2
    error = refused(CompletionRequest, '{"model": "m", "frequency_penalty": 1}')
    assert error.param == "frequency_penalty" and error.code == "unsupported_parameter"


def test_errors_name_the_field_without_pydantic_internals():
    assert where(("prompt", "list[str]", 2)) == "prompt.2"
    assert where(("stream_options", "include_usage")) == "stream_options.include_usage"
    error = refused(CompletionRequest, '{"model": "m", "stream_options": {"include_usage": 1}}')
    assert error.param == "stream_options.include_usage"
    error = refused(CompletionRequest, '{"model": "m", "stop": 5}')
    assert error.param == "stop" and "string" in error.message
    assert refused(GenerateRequest, '{"prompt": "a", "colour": "red"}').code == "unknown_field"
