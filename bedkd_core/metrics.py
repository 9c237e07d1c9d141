"""Metrics: clean accuracy (CACC), attack success rate (ASR, non-target rows only), detection precision/recall.

Introduced in chapter 2. Metrics are the only code that reads the oracle `is_poisoned` flags.
"""
from __future__ import annotations

import numpy as np
from datasets import Dataset

from .victim import predict_proba


def accuracy(predictions: np.ndarray, labels) -> float:
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((np.asarray(predictions) == labels).mean())


def attack_success_rate(predictions: np.ndarray, *, target_label: int, source_labels) -> float:
    """Share of triggered inputs classified as the target, over rows whose true label is not the target."""
    source_labels = np.asarray(source_labels)
    keep = source_labels != target_label
    if not keep.any():
        raise ValueError("no non-target rows in the triggered set: ASR is undefined")
    return float((np.asarray(predictions)[keep] == target_label).mean())


def evaluate(model, tokenizer, *, clean_test: Dataset, triggered_test: Dataset, target_label: int,
             max_length: int = 128) -> dict[str, float]:
    """CACC on the clean test split and ASR on the triggered non-target test set, as fractions."""
    clean_pred = predict_proba(model, tokenizer, list(clean_test["text"]), max_length=max_length).argmax(1)
    trig_pred = predict_proba(model, tokenizer, list(triggered_test["text"]), max_length=max_length).argmax(1)
    return {
        "cacc": accuracy(clean_pred, clean_test["label"]),
        "asr": attack_success_rate(trig_pred, target_label=target_label, source_labels=triggered_test["source_label"]),
    }


def detection_scores(flagged: np.ndarray, is_poisoned: np.ndarray) -> dict:
    """Precision and recall of the flagged suspect rows against the oracle poison flags."""
    flagged = np.asarray(flagged, dtype=int)
    is_poisoned = np.asarray(is_poisoned, dtype=bool)
    hits = int(is_poisoned[flagged].sum()) if len(flagged) else 0
    total = int(is_poisoned.sum())
    return {
        "precision": hits / len(flagged) if len(flagged) else 0.0,
        "recall": hits / total if total else 0.0,
        "n_flagged": int(len(flagged)),
    }
