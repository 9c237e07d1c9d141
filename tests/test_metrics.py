import numpy as np
import pytest

from bedkd_core.metrics import accuracy, attack_success_rate, detection_scores


def test_asr_counts_only_non_target_rows():
    predictions = np.array([1, 1, 0, 1, 1])
    source = np.array([0, 0, 0, 1, 1])  # the last two were target-class rows to begin with
    assert attack_success_rate(predictions, target_label=1, source_labels=source) == pytest.approx(2 / 3)
    unknown_class = np.array([-1, -1, -1, -1, -1])  # pools whose source class is unknown but known non-target
    assert attack_success_rate(predictions, target_label=1, source_labels=unknown_class) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="no non-target rows"):
        attack_success_rate(predictions, target_label=1, source_labels=np.ones(5, int))


def test_accuracy_and_detection():
    assert accuracy(np.array([0, 1, 1]), [0, 1, 0]) == pytest.approx(2 / 3)
    flags = np.zeros(10, bool)
    flags[[1, 2, 3, 4]] = True
    assert detection_scores(np.array([1, 2, 9]), flags) == {"precision": pytest.approx(2 / 3), "recall": 0.5, "n_flagged": 3}
    assert detection_scores(np.array([], int), flags)["precision"] == 0.0
