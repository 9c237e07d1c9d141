"""Metrics: clean accuracy (CACC), attack success rate (ASR, non-target rows only), detection precision/recall.

Introduced in chapter 2. Metrics are the only code that reads the oracle `is_poisoned` flags.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from datasets import Dataset

from .cache import save_arrays_atomic, weights_digest
from .models import device
from .training import predict_proba


def accuracy(predictions: np.ndarray, labels) -> float:
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((np.asarray(predictions) == labels).mean())


def attack_success_rate(predictions: np.ndarray, *, target_label, source_labels) -> float:
    """Share of triggered inputs classified as the target, over rows whose true label is not the target.

    `target_label`: one label, or one per row (attacks with several targets)."""
    source_labels = np.asarray(source_labels)
    keep = source_labels != target_label
    if not keep.any():
        raise ValueError("no non-target rows in the triggered set: ASR is undefined")
    return float((np.asarray(predictions) == target_label)[keep].mean())


def backdoor_targets(triggered_test: Dataset, target_label: int | None):
    """The label each triggered row's backdoor aims at: `target_label`, or (None) each row's own `label`."""
    return np.asarray(triggered_test["label"]) if target_label is None else target_label


def _asr_by_backdoor(hits: np.ndarray, keep: np.ndarray, triggered_test: Dataset) -> dict:
    """ASR of each backdoor of a triggered set with a `backdoor` column (several backdoors in one attack)."""
    if "backdoor" not in triggered_test.column_names:
        return {}
    names = np.asarray(triggered_test["backdoor"])
    return {"asr_by_backdoor": {str(n): float(hits[keep & (names == n)].mean())
                                for n in dict.fromkeys(names.tolist())}}


def evaluate(model, tokenizer, *, clean_test: Dataset, triggered_test: Dataset, target_label: int | None,
             max_length: int = 128, cache: Path | None = None) -> dict[str, float]:
    """CACC on the clean test split and ASR on the triggered non-target test set, as fractions.

    `target_label` None: each triggered row's `label` is its own target (attacks with several targets).

    `cache`: the folder of a cached victim (`Victim.path`). `model`'s predictions on each test set are stored
    there, keyed by its weights and the texts, and reused, so chapter 3 does not recompute what chapter 2 measured.
    """
    weights = weights_digest(model) if cache is not None else None
    clean_pred = predictions(model, tokenizer, list(clean_test["text"]), max_length=max_length, cache=cache,
                             weights=weights)
    trig_pred = predictions(model, tokenizer, list(triggered_test["text"]), max_length=max_length, cache=cache,
                            weights=weights)
    targets = backdoor_targets(triggered_test, target_label)
    source = np.asarray(triggered_test["source_label"])
    return {
        "cacc": accuracy(clean_pred, clean_test["label"]),
        "asr": attack_success_rate(trig_pred, target_label=targets, source_labels=source),
        **_asr_by_backdoor(trig_pred == targets, source != targets, triggered_test),
    }


def predictions(model, tokenizer, texts: list[str], *, max_length: int = 128, cache: Path | None = None,
                weights: str | None = None) -> np.ndarray:
    """The predicted class of each text; stored under `cache`/predictions/ when given, keyed by the model's weights
    (`weights`: their `weights_digest`, computed when not given) and the texts, so changed weights never reuse them."""
    if cache is None:
        return predict_proba(model, tokenizer, texts, max_length=max_length).argmax(1)
    weights = weights or weights_digest(model)
    key = hashlib.sha256(json.dumps([max_length, device().type, weights, texts]).encode()).hexdigest()[:20]
    path = Path(cache) / "predictions" / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    predicted = predict_proba(model, tokenizer, texts, max_length=max_length).argmax(1)
    save_arrays_atomic(path, predicted)
    return predicted


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


# ---------------------------------------------------------------- inference-time defenses (filters, sanitisers)

def rejection_rates(*, clean_rejected, triggered_rejected) -> dict:
    """FRR: share of clean inputs rejected. FAR: share of triggered inputs accepted (not rejected)."""
    clean_rejected = np.asarray(clean_rejected, dtype=bool)
    triggered_rejected = np.asarray(triggered_rejected, dtype=bool)
    if not len(clean_rejected) or not len(triggered_rejected):
        raise ValueError("FRR/FAR of an empty set are undefined")
    return {"frr": float(clean_rejected.mean()), "far": float(1.0 - triggered_rejected.mean())}


def evaluate_defense(result, *, clean_test: Dataset, triggered_test: Dataset, target_label: int | None,
                     max_length: int = 128) -> dict:
    """CACC/ASR of a defended model, counting an inference-time defense's filtering or sanitising.

    - A defense that only returns a model: exactly `evaluate` ({"cacc", "asr"}).
    - `result.details["sanitize"]` (ONION): inputs are rewritten before classification; CACC and ASR are on
      the rewritten inputs. Nothing is rejected, so there is no FRR/FAR.
    - `result.reject` (STRIP, RAP): a rejected input gets no prediction.
      * CACC is accuracy over the ACCEPTED clean inputs; FRR (share of clean inputs rejected) is reported
        beside it, together with `cacc_all` = correct-and-accepted / all clean inputs (a rejection as an error).
      * ASR counts a rejected triggered input as an attack failure: (accepted and classified as the target) /
        all triggered non-target inputs. FAR is the share of triggered non-target inputs accepted.
    - `result.details["eval_rows"]` = N evaluates only the first N rows of each test set (they are random
      subsets already); `n_clean` / `n_triggered` record what was evaluated.
    """
    limit = (result.details or {}).get("eval_rows")
    if limit:
        clean_test = clean_test.select(range(min(int(limit), len(clean_test))))
        triggered_test = triggered_test.select(range(min(int(limit), len(triggered_test))))
    clean_texts, trig_texts = list(clean_test["text"]), list(triggered_test["text"])
    source = np.asarray(triggered_test["source_label"])
    target_label = backdoor_targets(triggered_test, target_label)
    keep = source != target_label
    if not keep.any():
        raise ValueError("no non-target rows in the triggered set: ASR is undefined")
    sanitize = (result.details or {}).get("sanitize")
    if sanitize is not None:
        clean_texts, trig_texts = list(sanitize(clean_texts)), list(sanitize(trig_texts))
    clean_pred = predict_proba(result.model, result.tokenizer, clean_texts, max_length=max_length).argmax(1)
    trig_pred = predict_proba(result.model, result.tokenizer, trig_texts, max_length=max_length).argmax(1)
    labels = np.asarray(clean_test["label"])
    out: dict = {}
    if result.reject is None:
        out = {"cacc": accuracy(clean_pred, labels),
               "asr": attack_success_rate(trig_pred, target_label=target_label, source_labels=source),
               **_asr_by_backdoor(trig_pred == target_label, keep, triggered_test)}
    else:
        clean_rejected = np.asarray(result.reject(clean_texts), dtype=bool)
        trig_rejected = np.asarray(result.reject(trig_texts), dtype=bool)
        accepted = ~clean_rejected
        correct = clean_pred == labels
        out = {
            "cacc": float(correct[accepted].mean()) if accepted.any() else float("nan"),
            "asr": float(((trig_pred == target_label) & ~trig_rejected)[keep].mean()),
            **_asr_by_backdoor((trig_pred == target_label) & ~trig_rejected, keep, triggered_test),
            **rejection_rates(clean_rejected=clean_rejected, triggered_rejected=trig_rejected[keep]),
            "cacc_all": float((correct & accepted).mean()),
        }
    if limit or sanitize is not None or result.reject is not None:
        out.update(n_clean=len(clean_texts), n_triggered=int(keep.sum()))
    return out
