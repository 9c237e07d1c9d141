"""BeDKD's stages one by one (fast: no victim training)."""
import numpy as np
import pytest
import torch
from datasets import Dataset

from bedkd_core.data import DataError
from bedkd_core.defenses.base import DefenderData, OracleLeakError
from bedkd_core.defenses.bedkd import (
    BeDKDConfig, distillation_loss, flip_labels, identify_poisoned, infer_target, make_config, split_clean,
)


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(student_logits=torch.randn(4, 3, generator=g), teacher_logits=torch.randn(4, 3, generator=g),
                student_hidden=torch.randn(4, 5, 8, generator=g), teacher_hidden=torch.randn(4, 5, 8, generator=g),
                labels=torch.tensor([0, 2, 1, 0]))


def test_distillation_loss_matches_the_reference_formula():
    x = _loss_inputs()
    T, a = 2.5, 0.3
    p_t = torch.softmax(x["teacher_logits"] / T, -1)
    log_p_s = torch.log_softmax(x["student_logits"] / T, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()  # batch mean, no T² factor
    ce = torch.nn.functional.cross_entropy(x["student_logits"], x["labels"])
    mse = ((x["student_hidden"] - x["teacher_hidden"]) ** 2).mean()
    expected = a * ce + (1 - a) * (kl + mse)
    assert torch.allclose(distillation_loss(**x, temperature=T, alpha=a), expected)
    assert torch.allclose(distillation_loss(**x, temperature=T, alpha=a, sign=-1), -expected)


def test_masked_mse_ignores_padding():
    x = _loss_inputs()
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[:, 3:] = 0
    changed = dict(x, student_hidden=x["student_hidden"].clone())
    changed["student_hidden"][:, 3:] += 100.0  # only padded positions differ
    masked = [distillation_loss(**inp, temperature=1.0, alpha=0.3, attention_mask=mask) for inp in (x, changed)]
    assert torch.allclose(masked[0], masked[1])
    assert distillation_loss(**changed, temperature=1.0, alpha=0.3) > masked[1] + 100


def test_flip_labels_is_a_swap_or_a_cyclic_shift():
    assert flip_labels([0, 1, 1], num_classes=2) == [1, 0, 0]
    assert flip_labels([0, 1, 2, 3], num_classes=4) == [1, 2, 3, 0]


def test_split_clean_is_disjoint_per_class_and_names_short_classes():
    clean = Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": [i % 3 for i in range(30)]})
    dmm, akd = split_clean(clean, num_classes=3, dmm_per_class=2, clean_per_class=5, seed=0)
    assert set(dmm["text"]).isdisjoint(akd["text"])
    assert np.bincount(dmm["label"]).tolist() == [2, 2, 2] and np.bincount(akd["label"]).tolist() == [5, 5, 5]
    with pytest.raises(DataError, match="10 samples of class 0; BeDKD needs 12"):
        split_clean(clean, num_classes=3, dmm_per_class=4, clean_per_class=8, seed=0)


def test_faithful_scan_keeps_the_reference_off_by_one():
    n = 300
    scores = {"score": np.full(n, 0.05), "teacher_pred": np.ones(n, int), "dmm_pred": np.ones(n, int)}
    kept, info = identify_poisoned(scores=scores, labels=np.ones(n, int), config=make_config(preset="faithful"),
                                   num_classes=2)
    assert len(kept) == 33 and kept.tolist() == list(range(33))  # file order, first 128 candidates, 33 kept
    assert info["n_candidates"] == 128


def test_fixed_ranking_infers_the_target_and_ranks_by_score():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 200 + [1] * 200)
    score = rng.uniform(0.2, 0.5, 400)
    score[:20] = rng.uniform(0.0, 0.02, 20)       # class-0 rows the DMM failed to flip: lowest scores
    score[200:260] = rng.uniform(0.02, 0.08, 60)  # a pile-up of class-1 rows under tau: the poison
    scores = {"score": score, "teacher_pred": labels.copy(), "dmm_pred": labels.copy()}
    reference = {"labels": np.array([0] * 50 + [1] * 50), "score": np.r_[np.full(5, 0.01), np.full(95, 0.3)]}
    config = make_config(n_poison=32)
    kept, info = identify_poisoned(scores=scores, labels=labels, config=config, reference=reference, num_classes=2)
    assert info["inferred_target"] == 1
    assert set(kept.tolist()) <= set(range(200, 260)) and len(kept) == 32
    assert np.all(np.diff(score[kept]) >= 0)
    plain, _ = identify_poisoned(scores=scores, labels=labels, config=make_config(n_poison=32, infer_target=False),
                                 reference=reference, num_classes=2)
    assert set(range(20)) <= set(plain.tolist())  # without the class structure the failed flips win


def test_infer_target_reports_no_evidence():
    target, excess = infer_target(suspect_labels=[0, 1], suspect_scores=np.array([0.5, 0.5]),
                                  reference_labels=np.array([0, 1]), reference_scores=np.array([0.5, 0.5]),
                                  tau=0.1, num_classes=2)
    assert target is None and excess == {"0": 0.0, "1": 0.0}


def test_config_presets_and_unknown_options():
    assert make_config(preset="faithful").scan == "file_order"
    assert make_config(tau=0.2).tau == 0.2 and make_config().preset == "fixed"
    with pytest.raises(DataError, match="unknown BeDKD preset 'paper'"):
        make_config(preset="paper")
    with pytest.raises(DataError, match="unknown BeDKD option.*taus"):
        make_config(taus=0.3)
    assert set(BeDKDConfig().asdict()) >= {"tau", "n_poison", "alpha", "temperature_akd", "punish_bound"}


def test_defender_data_refuses_oracle_flags():
    table = Dataset.from_dict({"text": ["a"], "label": [0], "is_poisoned": [1]})
    clean = Dataset.from_dict({"text": ["b"], "label": [1]})
    with pytest.raises(OracleLeakError, match="suspect set carries oracle poison flags"):
        DefenderData(clean=clean, suspect=table, num_classes=2)


def test_loss_term_weights_drop_terms_for_ablations():
    x = _loss_inputs()
    full = distillation_loss(**x, temperature=2.0, alpha=0.3)
    no_hidden = distillation_loss(**x, temperature=2.0, alpha=0.3, hidden_weight=0.0)
    mse = ((x["student_hidden"] - x["teacher_hidden"]) ** 2).mean()
    assert torch.allclose(full - no_hidden, 0.7 * mse)


def test_random_identification_ignores_scores():
    n = 500
    scores = {"score": np.zeros(n), "teacher_pred": np.ones(n, int), "dmm_pred": np.ones(n, int)}
    kept, _ = identify_poisoned(scores=scores, labels=np.ones(n, int), config=make_config(identify="random"),
                                num_classes=2)
    assert len(kept) == 32 and len(set(kept.tolist())) == 32 and kept.max() > 100
    with pytest.raises(DataError, match="unknown BeDKD identify 'oracle'"):
        make_config(identify="oracle")
