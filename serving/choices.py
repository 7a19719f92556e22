"""A request's choices, whatever API shape they are sent in: one loop over the batcher's events that yields, per
choice, its characters up to its first stop string, each character's log-probability and (when asked) its
likeliest alternatives, and its finish reason; then folding them into whole choices, and best_of's pick.

/v1/completions sends these pieces in OpenAI's legacy shape (routes_openai.py); a chat route can send the same
pieces as chat deltas and its own logprobs shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

from serving.batcher import Chunk, Done
from serving.generation import RequestStreams, StopScanner
from serving.logprobs import CharScores, Top, generated


@dataclass(frozen=True)
class Echo:
    """A choice's prompt, sent in front of its characters; `scores` when its log-probabilities were asked for."""

    text: str
    scores: CharScores | None = None


@dataclass(frozen=True)
class ChoicePiece:
    """Characters of one choice, a score per character; a choice's last piece carries its finish reason."""

    index: int
    text: str
    scores: CharScores
    finish_reason: Literal["stop", "length"] | None = None
    generated: bool = True  # False: the echoed prompt


def choice_pieces(generation: RequestStreams, events: Iterator[Chunk | Done], *, choices: int, stops: list[str],
                  vocab: Sequence[str], want_top: bool, echo: Sequence[Echo] | None = None) -> Iterator[ChoicePiece]:
    """The one loop over the events of `choices` streams (stream i is choice i): the echoed prompts first, then
    each choice's characters up to its first stop string (a stopped choice's stream ends at once; the characters
    cut, and their scores, are never sent), and its finish reason. `want_top`: alternatives per character (as
    many as each stream's sampling.logprobs asked for)."""
    scanners = [StopScanner(stops) for _ in range(choices)]
    pending_logprobs: list[list[float | None]] = [[] for _ in range(choices)]
    pending_top: list[list[Top | None]] = [[] for _ in range(choices)]
    for i, prompt in enumerate(echo or ()):
        if prompt.text:
            scores = prompt.scores or CharScores([None] * len(prompt.text), None)
            yield ChoicePiece(i, prompt.text, scores, generated=False)
    for event in events:
        i = event.index
        if isinstance(event, Chunk):
            scores = generated(event, vocab, want_top)
            pending_logprobs[i].extend(scores.logprobs)
            if want_top:
                pending_top[i].extend(scores.top)
            text, stopped = scanners[i].feed(event.text)
            finish = "stop" if stopped else None
            if stopped:
                generation.finish(i)
        else:
            text, finish = scanners[i].flush(), "length"
        # The scanner sends characters in order: the first len(text) held scores are theirs.
        n = len(text)
        scores = CharScores(pending_logprobs[i][:n], pending_top[i][:n] if want_top else None)
        del pending_logprobs[i][:n], pending_top[i][:n]
        if finish:  # characters after a stop string are dropped with their scores
            pending_logprobs[i].clear()
            pending_top[i].clear()
        if text or finish:
            yield ChoicePiece(i, text, scores, finish)


@dataclass
class Choice:
    """A whole choice: its text (echoed prompt included), a score per character, its finish reason."""

    index: int
    text: str = ""
    logprobs: list[float | None] = field(default_factory=list)
    top: list[Top | None] | None = None
    finish_reason: Literal["stop", "length"] | None = None
    cumulative_logprob: float = 0.0  # of the generated characters: best_of's measure
    generated_chars: int = 0

    @property
    def scores(self) -> CharScores:
        return CharScores(self.logprobs, self.top)


def fold(pieces: Iterator[ChoicePiece], choices: int) -> list[Choice]:
    folded = [Choice(i) for i in range(choices)]
    for piece in pieces:
        choice = folded[piece.index]
        choice.text += piece.text
        choice.logprobs += piece.scores.logprobs
        if piece.scores.top is not None:
            choice.top = (choice.top or []) + piece.scores.top
        choice.finish_reason = piece.finish_reason or choice.finish_reason
        if piece.generated:
            choice.generated_chars += len(piece.text)
            choice.cumulative_logprob += sum(lp for lp in piece.scores.logprobs if lp is not None)
    return folded


def best_of(folded: list[Choice], candidates: int, n: int) -> list[Choice]:
    """Of each prompt's `candidates` consecutive choices, the `n` with the highest cumulative log-probability
    (the earlier one on a tie), best first, renumbered 0, 1, ... across the request."""
    kept = []
    for start in range(0, len(folded), candidates):
        group = folded[start:start + candidates]
        kept += sorted(group, key=lambda c: -c.cumulative_logprob)[:n]
    return [Choice(**{**choice.__dict__, "index": i}) for i, choice in enumerate(kept)]
