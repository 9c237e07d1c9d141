import numpy as np
import pytest
from datasets import Dataset

from bedkd_core.metrics import accuracy, attack_success_rate, detection_scores


def test_asr_counts_only_non_target_rows():
    predictions = np.array([1, 1, 0, 1, 1])
    source = np.array([0, 0, 0, 1, 1])  # the last two were target-class rows to begin with
    assert attack_success_rate(predictions, target_label=1, source_labels=source) == pytest.approx(2 / 3)
    unknown_class = np.array([-1, -1, -1, -1, -1])  # pools whose source class is unknown but known non-target
    assert attack_success_rate(predictions, target_label=1, source_labels=unknown_class) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="no non-target rows"):
        attack_success_rate(predictions, target_label=1, source_labels=np.ones(5, int))


def test_asr_with_a_target_per_row():
    """Attacks with several targets (shift, dual): each triggered row is judged against its own target."""
    predictions = np.array([1, 2, 0, 3])
    targets = np.array([1, 2, 3, 0])
    source = np.array([0, 1, 2, 0])  # the last row's true class is its target: not counted
    assert attack_success_rate(predictions, target_label=targets, source_labels=source) == pytest.approx(2 / 3)


def test_evaluate_splits_asr_by_backdoor(monkeypatch):
    from bedkd_core import metrics

    clean = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    triggered = Dataset.from_dict({"text": ["x", "y", "z", "w"], "label": [1, 1, 0, 0],
                                   "source_label": [0, 0, 1, 1],
                                   "backdoor": ["badnets", "badnets", "addsent", "addsent"]})
    answers = {("a", "b"): np.array([0, 1]), ("x", "y", "z", "w"): np.array([1, 1, 0, 1])}
    monkeypatch.setattr(metrics, "predictions", lambda model, tok, texts, **k: answers[tuple(texts)])
    out = metrics.evaluate(None, None, clean_test=clean, triggered_test=triggered, target_label=None)
    assert out == {"cacc": 1.0, "asr": 0.75, "asr_by_backdoor": {"badnets": 1.0, "addsent": 0.5}}


def test_accuracy_and_detection():
    assert accuracy(np.array([0, 1, 1]), [0, 1, 0]) == pytest.approx(2 / 3)
    flags = np.zeros(10, bool)
    flags[[1, 2, 3, 4]] = True
    assert detection_scores(np.array([1, 2, 9]), flags) == {"precision": pytest.approx(2 / 3), "recall": 0.5, "n_flagged": 3}
    assert detection_scores(np.array([], int), flags)["precision"] == 0.0


def test_evaluate_stores_a_cached_victims_predictions_per_test_set(tmp_path, monkeypatch, sst2):
    from bedkd_core import metrics
    from bedkd_core.models import load_classifier

    model, tokenizer = load_classifier("minilm", num_labels=2)
    clean = sst2.test.select(range(10))
    triggered = Dataset.from_dict({"text": [t + " cf" for t in clean["text"]], "source_label": [0] * 10})
    tests = dict(clean_test=clean, triggered_test=triggered, target_label=1)
    first = metrics.evaluate(model, tokenizer, **tests, cache=tmp_path)
    assert first == metrics.evaluate(model, tokenizer, **tests)  # the cache changes no number
    assert len(list((tmp_path / "predictions").glob("*.npy"))) == 2  # one file per test set

    calls = []
    monkeypatch.setattr(metrics, "predict_proba", lambda *a, **k: calls.append(1) or np.zeros((len(a[2]), 2)))
    assert metrics.evaluate(model, tokenizer, **tests, cache=tmp_path) == first and calls == []
    metrics.evaluate(model, tokenizer, **{**tests, "clean_test": sst2.test.select(range(1, 11))}, cache=tmp_path)
    assert calls == [1]  # other texts: computed (here by the stand-in) and stored
