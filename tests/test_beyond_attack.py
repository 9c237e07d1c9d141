"""Issue #16, attacks beyond the published settings: how strongly the candidates single out one target."""
import numpy as np

from bedkd_core.defenses.bedkd import identify_poisoned, make_config, target_evidence

SIZES = [1000, 1000]
CLEAN = [0.05, 0.05]  # 5% of clean rows of each class fall under tau
REF = [128, 128]


def test_one_pile_is_clear_two_piles_are_several_and_noise_is_weak():
    one = target_evidence(counts=[52, 160], sizes=SIZES, clean_rates=CLEAN, reference_sizes=REF)
    assert one["verdict"] == "clear" and one["class"] == 1
    two = target_evidence(counts=[160, 170], sizes=SIZES, clean_rates=CLEAN, reference_sizes=REF)
    assert two["verdict"] == "several"
    noise = target_evidence(counts=[48, 60], sizes=SIZES, clean_rates=CLEAN, reference_sizes=REF)
    assert noise["verdict"] == "weak" and noise["z"][1] < 3


def test_a_small_reference_set_widens_the_error():
    """The same excess is clear against 1,000 reference rows a class and weak against 20."""
    counts = [50, 100]
    big = target_evidence(counts=counts, sizes=SIZES, clean_rates=CLEAN, reference_sizes=[1000, 1000])
    small = target_evidence(counts=counts, sizes=SIZES, clean_rates=CLEAN, reference_sizes=[20, 20])
    assert big["verdict"] == "clear" and small["verdict"] == "weak"
    assert small["z"][1] < big["z"][1]


def test_identification_reports_its_target_evidence():
    """Two classes of candidates (two backdoors): the report says several, and still names the inferred one."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    poisoned = np.zeros(1000, bool)
    poisoned[rng.choice(500, 60, replace=False)] = True
    poisoned[500 + rng.choice(500, 80, replace=False)] = True
    score = np.where(poisoned, 0.02, rng.uniform(0.15, 0.9, 1000))
    probs = np.stack([1 - score, score], 1)
    scores = {"score": score, "teacher_pred": labels, "dmm_prob": probs}
    reference = {"labels": np.repeat([0, 1], 128), "score": rng.uniform(0.15, 0.9, 256),
                 "dmm_prob": np.full((256, 2), 0.5)}
    config = make_config(preset="quick")
    _, info = identify_poisoned(scores=scores, labels=labels, config=config, n_rows=48, reference=reference,
                                num_classes=2)
    assert info["target_evidence"]["verdict"] == "several"
    assert info["inferred_target"] == 1


def test_rounds_rerun_on_the_purified_model_until_nothing_is_left_to_punish(monkeypatch):
    from types import SimpleNamespace

    import pytest

    from bedkd_core.data import DataError
    from bedkd_core.defenses import bedkd as bk
    from bedkd_core.defenses.base import DefenseResult

    with pytest.raises(DataError, match="rounds=2: give 1, or more than 1 with count='evidence'"):
        make_config(preset="quick", rounds=2)
    plan = iter([([1, 2], 0, "m1"), ([5], 1, "m2"), ([], None, None)])
    teachers = []

    def fake_round(*, teacher, skip_if_none=False, **kwargs):
        teachers.append(teacher)
        flagged, target, model = next(plan)
        assert skip_if_none == (len(teachers) > 1)
        summary = {"inferred_target": target, "n_identified": len(flagged), "count": {"decision": "as asked"}}
        details = {"summary": summary, **({"scores": {"values": [0.1]}} if len(teachers) == 1 else {})}
        return DefenseResult(model=model, tokenizer="tok", flagged=np.asarray(flagged, int), details=details)

    monkeypatch.setattr(bk, "_round", fake_round)
    config = make_config(preset="quick-adaptive", rounds=4)
    result = bk.bedkd(victim=SimpleNamespace(model="victim", tokenizer="tok"), data=None, config=config)
    assert teachers == ["victim", "m1", "m2"]  # each round distils from the last purified model
    assert result.model == "m2" and result.flagged.tolist() == [1, 2, 5]
    rounds = result.details["summary"]["rounds"]
    assert [r["inferred_target"] for r in rounds] == [0, 1, None]
    assert [r["trained"] for r in rounds] == [True, True, False]
    assert result.details["scores"] == {"values": [0.1]}  # the victim's scores, not a later teacher's
