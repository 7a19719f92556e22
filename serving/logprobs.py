"""Log-probabilities of characters, from the model's own distribution (before temperature, top-k, top-p and
min-p: what OpenAI's API and vLLM's default `raw_logprobs` report).

- Generated characters: `generate` returns each one's log-probability and the likeliest characters before it
  (serving/batcher.py puts them in its Chunks; `generated` reads them).
- A prompt's characters (`echo` with `logprobs`): the `score` signature, which gives the same for a text it reads
  (`score_texts`). The first character of a fresh text has no state before it to be predicted from: its entry is
  null, as OpenAI's API answers.

`legacy` writes either in OpenAI's legacy completions shape. A token is a character; top alternatives are keyed
by the character.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from model_interface import signatures as sig
from model_interface.errors import InputRejected
from serving.backend import Backend, ServedModel
from serving.batcher import Chunk
from serving.schemas import CompletionLogprobs

Top = dict[str, float]


@dataclass(frozen=True)
class CharScores:
    """Per character of a text: its log-probability (None: nothing predicted it) and, when asked, the likeliest
    characters at its position with theirs (plus the character itself)."""

    logprobs: list[float | None]
    top: list[Top | None] | None


def alternatives(vocab: Sequence[str], ids: np.ndarray, values: np.ndarray, char: str, logprob: float) -> Top:
    """{character: log-probability} of the ids (-1 = none), likeliest first, then `char` if it is not among them
    (OpenAI: up to logprobs + 1 entries)."""
    top = {vocab[i]: float(v) for i, v in zip(ids.tolist(), values.tolist()) if i >= 0}
    if char not in top:
        top[char] = logprob
    return top


def generated(chunk: Chunk, vocab: Sequence[str], want_top: bool) -> CharScores:
    """A batcher Chunk's characters' scores (`want_top`: the alternatives it was asked for, perhaps none)."""
    n = len(chunk.text)
    logprobs = chunk.log_probs.tolist() if chunk.log_probs is not None else [None] * n
    if not want_top:
        return CharScores(logprobs, None)
    if chunk.top_ids is None:
        return CharScores(logprobs, [{c: lp} for c, lp in zip(chunk.text, logprobs)])
    return CharScores(logprobs, [alternatives(vocab, chunk.top_ids[t], chunk.top_log_probs[t], chunk.text[t],
                                              logprobs[t]) for t in range(n)])


SCORE_OUTPUTS = ("log_probs", "lengths", "state", "unknown_chars", "top_ids", "top_log_probs")


def score_texts(backend: Backend, model: ServedModel, texts: Sequence[str], top_n: int,
                piece_chars: int) -> list[CharScores]:
    """Each text read from a fresh state: every character's log-probability and its `top_n` likeliest
    alternatives, the first character's None. All texts in one `score` call per `piece_chars` characters (a long
    prompt is read in pieces, the state carried, so no call runs for long)."""
    vocab = model.metadata.vocab
    states = sig.fresh_states(len(texts), model.state_size)
    scores = [CharScores([], []) for _ in texts]
    longest = max((len(t) for t in texts), default=0)
    for start in range(0, longest, piece_chars):
        pieces = [t[start:start + piece_chars] for t in texts]
        out = backend.call(sig.SCORE, model.version, sig.text_inputs(pieces, states), SCORE_OUTPUTS)
        for row, piece in enumerate(pieces):
            unknown = out["unknown_chars"][row].decode("utf-8")
            if unknown or int(out["lengths"][row]) != len(piece):
                raise InputRejected(f"the model could not read the prompt: characters outside its vocabulary "
                                    f"{list(unknown)}" if unknown else "the model read a prompt's length wrongly")
            logprobs = out["log_probs"][row, :len(piece)].tolist()
            scores[row].logprobs.extend(logprobs)
            scores[row].top.extend(
                alternatives(vocab, out["top_ids"][row, t, :top_n], out["top_log_probs"][row, t, :top_n],
                             piece[t], logprobs[t]) for t in range(len(piece)))
        states = out["state"]
    for text_scores in scores:
        if text_scores.logprobs:  # a fresh text's first character: nothing before it predicted it
            text_scores.logprobs[0] = None
            text_scores.top[0] = None
    return scores


def legacy(text: str, scores: CharScores, offset: int) -> CompletionLogprobs:
    """OpenAI's legacy shape for `text` (one entry per character), its first character at `offset` in the
    choice's returned text."""
    top = scores.top if scores.top is not None else [None] * len(text)
    return CompletionLogprobs(tokens=list(text), token_logprobs=list(scores.logprobs), top_logprobs=list(top),
                              text_offset=list(range(offset, offset + len(text))))
