"""STRIP (Gao et al.), the text version: an inference-time input filter.

Each input is perturbed `repeat` times, STRIP's superimposition done with words (as OpenBackdoor's text STRIP
does): in every copy a share `swap_ratio` of its word positions is overwritten by the most characteristic words
(highest TF-IDF, English stop words excluded) of one randomly drawn clean text of the defender. A clean
input's prediction wavers when another text's content words are mixed in, so the mean entropy of the copies'
predictions is high; a triggered input keeps the trigger in many copies and the backdoor keeps the prediction
confident, so its entropy is low. An input is rejected when its entropy is below a threshold set on held-out clean rows so that a share
`frr` of them (1% by default) is rejected.

The model is not changed: `DefenseResult.model` is the victim itself and `reject(texts)` is the defense.
Data: the threshold rows come from `data.dev` when it has `threshold_per_class` rows of every class, otherwise
from `data.clean`; the mixed-in texts are `source_per_class` other clean rows per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..training import predict_proba
from ._common import held_out_split, per_class_rows, rows_summary
from ..options import option
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class STRIPConfig(DefenseConfig):
    repeat: int = option(20, "Perturbed copies per input (OpenBackdoor uses 5).")
    swap_ratio: float = option(0.5, "Share of word positions replaced in each copy (OpenBackdoor's value).")
    frr: float = option(0.01, "false rejection rate on clean rows that sets the threshold")
    threshold_per_class: int = option(320, "held-out clean rows per class for the threshold")
    source_per_class: int = option(80, "clean rows per class whose words are mixed in")
    max_length: int = option(128, "max tokens per input")
    batch_size: int = option(128, "batch size")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(repeat=5, threshold_per_class=128, source_per_class=64)}


def check(data: DefenderData, config: STRIPConfig) -> None:
    held_out_split(data, per_class=config.threshold_per_class, seed=config.seed, defense="strip",
                   reserve_per_class=config.source_per_class)


def perturb(text: str, *, words: list[str], swap_ratio: float, rng: np.random.Generator) -> str:
    """Overwrite round(swap_ratio · n) (at least one) of the text's n word positions, chosen at random, with
    `words` in order (cycled if too few)."""
    tokens = text.split()
    if not tokens or not words:
        return text
    k = min(len(tokens), max(1, int(round(swap_ratio * len(tokens)))))
    for i, pos in enumerate(rng.choice(len(tokens), size=k, replace=False)):
        tokens[pos] = words[i % len(words)]
    return " ".join(tokens)


def content_words(texts: list[str]) -> list[list[str]]:
    """Per text, its words by decreasing TF-IDF over `texts` (English stop words excluded)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english")
    matrix = vectorizer.fit_transform(texts).tocsr()
    vocab = vectorizer.get_feature_names_out()
    out = []
    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        order = np.argsort(-row.data, kind="stable")
        out.append([str(vocab[row.indices[j]]) for j in order])
    return [w for w in out if w] or [" ".join(texts).split()[:10]]


def strip_entropy(model, tokenizer, texts: list[str], *, sources: list[list[str]], config: STRIPConfig) -> np.ndarray:
    """Mean prediction entropy (nats) over `repeat` perturbed copies of each text."""
    rng = np.random.default_rng(config.seed)
    copies = [perturb(t, words=sources[rng.integers(len(sources))], swap_ratio=config.swap_ratio, rng=rng)
              for t in texts for _ in range(config.repeat)]
    probs = predict_proba(model, tokenizer, copies, max_length=config.max_length, batch_size=config.batch_size)
    return mean_entropy(probs.reshape(len(texts), config.repeat, -1))


def mean_entropy(probs: np.ndarray) -> np.ndarray:
    """Per row, the mean over its copies of the prediction entropy (nats): probs (rows, copies, classes)."""
    probs = np.asarray(probs, dtype=float)
    return (-(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=-1)).mean(axis=-1)


def threshold_at_frr(scores: np.ndarray, frr: float) -> float:
    """The largest threshold t with at most a share `frr` of `scores` strictly below t (reject when score < t)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    k = int(np.floor(frr * len(scores)))  # scores[:k] fall below t
    if k <= 0:
        return float(scores[0])  # nothing below the smallest clean score
    return float(scores[k]) if k < len(scores) else float(np.inf)


def strip(*, victim, data: DefenderData, config: STRIPConfig) -> DefenseResult:
    """Fit STRIP's entropy threshold on clean rows; return the unchanged victim with a `reject` function."""
    held, source_name, used = held_out_split(data, per_class=config.threshold_per_class, seed=config.seed,
                                             defense="strip", reserve_per_class=config.source_per_class)
    source_rows = per_class_rows(data.clean["label"], per_class=config.source_per_class, num_classes=data.num_classes,
                                 seed=config.seed + 1, defense="strip", purpose="replacement words", exclude=used)
    sources = content_words(list(data.clean.select(source_rows)["text"]))
    model, tokenizer = victim.model, victim.tokenizer
    clean_entropy = strip_entropy(model, tokenizer, list(held["text"]), sources=sources, config=config)
    threshold = threshold_at_frr(clean_entropy, config.frr)

    scored: dict[tuple, np.ndarray] = {}

    def entropy(texts: list[str]) -> np.ndarray:
        """The texts' STRIP entropies, computed once per list (evaluating and plotting then see the same)."""
        key = tuple(texts)
        if key not in scored:
            scored[key] = strip_entropy(model, tokenizer, list(texts), sources=sources, config=config)
        return scored[key]

    def reject(texts: list[str]) -> np.ndarray:
        return entropy(texts) < threshold

    rows = rows_summary(clean=len(source_rows) + (len(held) if source_name == "clean" else 0),
                        dev=len(held) if source_name == "dev" else 0)
    summary = {"defender_rows": rows, "threshold": threshold, "threshold_source": source_name,
               "threshold_rows": len(held), "clean_frr_on_threshold_rows": float((clean_entropy < threshold).mean()),
               "clean_entropy_mean": float(clean_entropy.mean())}
    return DefenseResult(model=model, tokenizer=tokenizer, reject=reject,
                         details={"summary": summary, "score": entropy, "clean_scores": clean_entropy.tolist()})
