"""Caption: a sentence describing a scene (the ``captioner``).

| graph outputs | output | confidence | parts | details |
|---|---|---|---|---|
| ``tokens`` int64 [B, T] (ids into the card's ``labels``, the vocabulary), ``token_probs`` [B, T] | the caption text | the card's ``confidence_kind`` over the words and the end token: ``joint_token_prob`` (product), ``mean_token_prob`` or ``min_token_prob`` | each word, its probability the confidence | ``tokens``, ``token_confidences``, ``end_confidence``, ``truncated`` |

The graph decodes (greedy, inside the graph: training/captioner/model.py), so postprocessing
reads the ids up to the end token (``extra["end_token"]``, default ``<eos>``), drops the other
special tokens (``extra["special_tokens"]``) and joins the words. A row without an end token
was cut off at T words: its caption is incomplete, so its confidence is 0 (always deferred). A row
with an id outside the vocabulary (or not a whole number) or a probability outside [0, 1] is no
answer (``None``); outputs that are not ``tokens`` and ``token_probs`` of one shape [B, T] (1-D or
3-D, batch sizes or lengths that differ, not numbers) make ``None`` for every row. Postprocess
never raises on what the graph returns.

Triage certifies the caption as a whole (the unit of exchangeability is a scene), so no word
gates on its own (:meth:`Caption.gating_confidences` is ``None``); the per-word confidences
travel in the answer so the auditor sees which words the model doubts.

Answer equality: :func:`normalize_caption` -- case, runs of white space and the spaces around
``, ; : . ! ?`` do not make another caption (``"Two objects : red"`` is ``"two objects: red"``).
One rule for the served text, gold scoring, reviewer agreement and QC.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from auditstream.registry import ModelCard
from auditstream.tasks.base import (Answer, Part, Task, answerable_rows, key_json, register, rounded,
                                    unit_interval)
from auditstream.wire import TaskKind

CONFIDENCE_KINDS = ("joint_token_prob", "mean_token_prob", "min_token_prob")
DEFAULT_END_TOKEN = "<eos>"
DEFAULT_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
_SPACE_BEFORE_MARK = re.compile(r"\s+([,;:.!?])")
_MARK_BEFORE_WORD = re.compile(r"([,;:.!?])(?=[^\s\d])")  # "3.5" and "1,000" stay numbers


def normalize_caption(text: str) -> str:
    """The one form of a caption that answer equality compares (see the module docstring)."""
    text = " ".join(str(text).lower().split())
    text = _SPACE_BEFORE_MARK.sub(r"\1", text)
    return _MARK_BEFORE_WORD.sub(r"\1 ", text)


def caption_confidence(probs: Sequence[float], kind: str) -> float:
    """A caption's confidence from the probabilities of its words and end token."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return 0.0
    if kind == "joint_token_prob":
        return float(np.exp(np.sum(np.log(np.clip(p, 1e-300, 1.0)))))
    if kind == "mean_token_prob":
        return float(p.mean())
    if kind == "min_token_prob":
        return float(p.min())
    raise ValueError(f"unknown caption confidence kind {kind!r}; one of {CONFIDENCE_KINDS}")


def end_token(card: ModelCard) -> str:
    return str(card.extra.get("end_token", DEFAULT_END_TOKEN))


class Caption(Task):
    kind = TaskKind.CAPTION
    output_names = ("tokens", "token_probs")

    def check_card(self, card: ModelCard) -> None:
        super().check_card(card)
        if card.triage.confidence_kind not in CONFIDENCE_KINDS:
            raise ValueError(f"caption model {card.name}: triage.confidence_kind {card.triage.confidence_kind!r} "
                             f"must be one of {CONFIDENCE_KINDS}")
        end, specials = card.extra.get("end_token", DEFAULT_END_TOKEN), card.extra.get("special_tokens", [])
        if not isinstance(end, str):
            raise ValueError(f"caption model {card.name}: extra.end_token must be a token of its labels (a string), "
                             f"got {end!r}")
        if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
            raise ValueError(f"caption model {card.name}: extra.special_tokens must be a list of tokens (strings) "
                             f"that are not words, got {specials!r}"[:400])
        if end_token(card) not in card.labels:
            raise ValueError(f"caption model {card.name}: its labels (the vocabulary, {len(card.labels)} tokens) "
                             f"lack the end token {end_token(card)!r} (extra.end_token)")

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        vocabulary = card.labels
        end = vocabulary.index(end_token(card))
        specials = {vocabulary.index(t) for t in card.extra.get("special_tokens", DEFAULT_SPECIAL_TOKENS)
                    if t in vocabulary}
        kind = card.triage.confidence_kind
        answers: list[Answer | None] = []
        tokens, token_probs = np.asarray(outputs["tokens"]), np.asarray(outputs["token_probs"])
        rows = len(tokens) if tokens.ndim else 1
        if (tokens.ndim != 2 or tokens.shape != token_probs.shape or tokens.dtype.kind not in "iuf"
                or token_probs.dtype.kind not in "iuf"):
            # not [B, T] ids and probabilities of one shape (a 1-D or 3-D graph output, batch sizes
            # that differ, text or bool): no row can be read, and each is no answer
            return [None] * rows
        answerable = answerable_rows(probs=token_probs, labels=tokens, n_labels=len(vocabulary))
        for ids, probs, ok in zip(tokens, token_probs, answerable.tolist()):
            if not ok:
                answers.append(None)  # not probabilities of words of this vocabulary: the record fails alone
                continue
            words, confidences, scored, end_p = [], [], [], None
            # whole-number float ids (answerable_rows checked them) index the vocabulary as ints
            for token, p in zip(ids.astype(np.int64).tolist(), probs.tolist()):
                p = unit_interval(p)  # answerable up to PROB_TOLERANCE past 1; published in [0, 1]
                scored.append(p)
                if token == end:
                    end_p = p
                    break
                if token not in specials:
                    words.append(str(vocabulary[token]))
                    confidences.append(rounded(p))
            confidence = 0.0 if end_p is None else rounded(caption_confidence(scored, kind))
            parts = tuple(Part(i, w, c) for i, (w, c) in enumerate(zip(words, confidences)))
            answers.append(Answer(normalize_caption(" ".join(words)), confidence, parts,
                                  {"tokens": words, "token_confidences": confidences,
                                   "end_confidence": None if end_p is None else rounded(end_p),
                                   "truncated": end_p is None, "confidence_kind": kind}))
        return answers

    def gating_confidences(self, answer: Answer) -> list[float] | None:
        return None  # the caption is certified as a whole; word confidences are for the auditor

    def answer_key(self, output: Any) -> str:
        return key_json(normalize_caption(output) if isinstance(output, str) else output)  # total: any JSON value


TASK = register(Caption())
