"""BKI (Chen & Dai 2021, Backdoor Keyword Identification): find the trigger words through the backdoored model's
own word importances, drop the training rows that contain them, retrain on the rest.

1. Importance. For each scanned suspect row and each of its words, delete the word and measure how far the
   victim's representation moves: the L∞ norm of the change of the last layer's [CLS] hidden state
   (`importance="hidden"`, the default). The original scores an LSTM by the change of its final hidden state, the
   vector its classifier reads; in the transformer victim [CLS] plays that part, as in OpenBackdoor's BKI (L∞ too).
   `importance="prob"` measures the change of the predicted probabilities instead (L∞ of the softmax change): it
   ignores what the classifier does not read, at the price of leaving the original's measure.
2. Keywords. Per row keep the `top_k` most important distinct words. Over the scanned rows a word's score is its
   mean importance (over the rows whose top words hold it) × log10 of that row count, as in the original and
   OpenBackdoor. OpenBackdoor keeps only the top word, so against BadNets' four triggers it finds one
   (OpenBackdoor #6). Here every word scoring at least `keyword_ratio` × the top score is a keyword (at most
   `max_keywords`); `keywords` > 0 keeps that many instead.
3. Filter and retrain. Drop every suspect row containing a keyword as a word (also rows not scanned: a sample
   finds the triggers, the drop covers the whole set), then retrain a fresh model from the backbone on the rest
   with the victim's own recipe (`_common.drop_and_retrain`, CUBE's path). `flagged` = the dropped rows.

The scan costs one forward pass per scanned word: the quick preset scans a 600-row sample. On fewer rows a strong
genuine word ("good") can outscore a trigger word, so the scan's size, not the rule, limits precision. Uses the
suspect set only (no clean rows). Works for word triggers only: a sentence or paraphrase trigger has no single
word whose deletion moves the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..data import DataError
from ..options import option
from ..training import forward_batches
from ._common import drop_and_retrain, retrain_recipe
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class BKIConfig(DefenseConfig):
    importance: Literal["hidden", "prob"] = option(
        "hidden", "hidden: L∞ change of the last [CLS] hidden state when a word is deleted (the original's); "
        "prob: L∞ change of the predicted probabilities")
    scan_rows: int = option(0, "suspect rows scanned for keywords (a seeded sample); 0 = all")
    max_words: int = option(48, "deletions per row at most (a seeded sample of a longer row's positions)")
    top_k: int = option(5, "most important words kept per row (OpenBackdoor: 5)")
    keyword_ratio: float = option(0.5, "keywords: every word scoring at least this share of the top score")
    max_keywords: int = option(10, "at most this many keywords by keyword_ratio")
    keywords: int = option(0, "keep exactly this many top-scoring words instead of keyword_ratio; 0 = off")
    batch_size: int = option(128, "deleted-word variants per forward batch")
    retrain: bool = option(True, "retrain a fresh model on the kept rows (true/false)")
    retrain_epochs: int | None = option(None, "None = the victim's own epochs.")
    backbone: str | None = option(None, "None = the victim's backbone (its `VictimConfig.model`).")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(0, "random seed of the defense's own sampling and training")

    def __post_init__(self):
        super().__post_init__()
        if self.top_k < 1 or self.max_words < 1 or self.max_keywords < 1 or not 0 < self.keyword_ratio <= 1:
            raise DataError("BKI options: top_k, max_words and max_keywords must be >= 1 and keyword_ratio in (0, 1]")


PRESETS = {"full": {}, "quick": {"scan_rows": 600, "max_words": 32}}
"""Quick: a 600-row sample of the suspect set, at most 32 deletions a row (minutes on 2 CPU cores)."""


def check(data: DefenderData, config: BKIConfig) -> None:
    if len(data.suspect) < 20:
        raise DataError(f"defense 'bki' scores words over the suspect training set: it needs at least 20 rows, "
                        f"got {len(data.suspect)}")


def _represent(model, tokenizer, texts, *, config: BKIConfig):
    """Yield (row indices, representation) batches: [CLS] hidden states or softmax probabilities."""
    for rows, logits, out in forward_batches(model, tokenizer, texts, max_length=config.max_length,
                                             batch_size=config.batch_size, hidden=config.importance == "hidden"):
        yield rows, (out[0][:, 0].clone() if config.importance == "hidden" else torch.softmax(logits, dim=-1))


def word_importance(*, model, tokenizer, texts: list[str], config: BKIConfig) -> list[dict[str, float]]:
    """Per text, {word: importance} of its scanned words (the largest over a word's positions)."""
    rng = np.random.default_rng(config.seed)
    originals = [None] * len(texts)
    for rows, rep in _represent(model, tokenizer, texts, config=config):
        for row, vector in zip(rows, rep):
            originals[row] = vector
    owners, words, variants = [], [], []
    for row, text in enumerate(texts):
        tokens = text.split()
        positions = range(len(tokens)) if len(tokens) <= config.max_words else \
            sorted(rng.choice(len(tokens), size=config.max_words, replace=False).tolist())
        for at in positions:
            owners.append(row)
            words.append(tokens[at])
            variants.append(" ".join(tokens[:at] + tokens[at + 1:]))
    out: list[dict[str, float]] = [{} for _ in texts]
    for rows, rep in _represent(model, tokenizer, variants, config=config):
        base = torch.stack([originals[owners[i]] for i in rows])
        deltas = (rep - base).abs().amax(dim=1).tolist()
        for i, delta in zip(rows, deltas):
            scores = out[owners[i]]
            scores[words[i]] = max(delta, scores.get(words[i], float("-inf")))
    return out


def keyword_scores(importances: list[dict[str, float]], *, top_k: int) -> dict[str, dict]:
    """{word: {rows, importance, score}} over rows' top-`top_k` words: score = mean importance × log10(rows)."""
    totals: dict[str, list[float]] = {}
    for scores in importances:
        for word in sorted(scores, key=lambda w: (-scores[w], w))[:top_k]:
            totals.setdefault(word, []).append(scores[word])
    out = {word: {"rows": len(values), "importance": float(np.mean(values)),
                  "score": float(np.mean(values) * np.log10(len(values)))} for word, values in totals.items()}
    return dict(sorted(out.items(), key=lambda item: (-item[1]["score"], item[0])))


def pick_keywords(scores: dict[str, dict], *, config: BKIConfig) -> list[str]:
    """The suspected triggers: the `keywords` top words, or those within `keyword_ratio` of the top score."""
    ranked = list(scores)  # keyword_scores sorts by score
    if config.keywords:
        return ranked[:config.keywords]
    if not ranked or scores[ranked[0]]["score"] <= 0:
        return []
    top = scores[ranked[0]]["score"]
    return [w for w in ranked if scores[w]["score"] >= config.keyword_ratio * top][:config.max_keywords]


def rows_with(texts: list[str], keywords: list[str]) -> np.ndarray:
    """Indices of the texts that hold one of `keywords` as a whitespace-separated word."""
    wanted = set(keywords)
    return np.asarray([i for i, text in enumerate(texts) if wanted & set(text.split())], dtype=int)


def bki_filter(*, victim, data: DefenderData, config: BKIConfig) -> tuple[np.ndarray, dict]:
    """The suspect rows BKI drops, and a summary: keywords, their scores, rows scanned and dropped."""
    check(data, config)
    texts = list(data.suspect["text"])
    scanned = np.arange(len(texts))
    if 0 < config.scan_rows < len(texts):
        scanned = np.sort(np.random.default_rng(config.seed).choice(len(texts), config.scan_rows, replace=False))
    importances = word_importance(model=victim.model, tokenizer=victim.tokenizer,
                                  texts=[texts[i] for i in scanned], config=config)
    scores = keyword_scores(importances, top_k=config.top_k)
    keywords = pick_keywords(scores, config=config)
    dropped = rows_with(texts, keywords)
    info = {"keywords": keywords, "n_scanned": int(len(scanned)), "n_dropped": int(len(dropped)),
            "top_words": {w: {k: round(v, 4) for k, v in s.items()} for w, s in list(scores.items())[:20]}}
    return dropped, info


def bki(*, victim, data: DefenderData, config: BKIConfig) -> DefenseResult:
    """Drop the suspect rows holding BKI's keywords and retrain a fresh model on the rest."""
    check(data, config)
    # the retraining recipe first: a missing backbone fails before the scan
    recipe = retrain_recipe(victim=victim, config=config, defense="bki") if config.retrain else None
    dropped, info = bki_filter(victim=victim, data=data, config=config)
    return drop_and_retrain(victim=victim, data=data, dropped=dropped, info=info,
                            recipe=recipe, desc="BKI retrain")
