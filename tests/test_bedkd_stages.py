"""BeDKD's stages one by one (fast: no victim training)."""
import numpy as np
import pytest
import torch
from datasets import Dataset

from bedkd_core.data import DataError
from bedkd_core.defenses.base import DefenderData, OracleLeakError
from bedkd_core.defenses.bedkd import (
    BeDKDConfig, distillation_loss, flip_labels, identify_poisoned, infer_target, log_odds, make_config, split_clean,
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
    kept, info = identify_poisoned(n_rows=32, scores=scores, labels=np.ones(n, int), config=make_config(preset="faithful"),
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
    config = make_config(n_poison=32, refine="none")
    kept, info = identify_poisoned(n_rows=32, scores=scores, labels=labels, config=config, reference=reference, num_classes=2)
    assert info["inferred_target"] == 1
    assert set(kept.tolist()) <= set(range(200, 260)) and len(kept) == 32
    assert np.all(np.diff(score[kept]) >= 0)
    plain, _ = identify_poisoned(n_rows=32, scores=scores, labels=labels, reference=reference, num_classes=2,
                                 config=make_config(n_poison=32, infer_target=False, refine="none"))
    assert set(range(20)) <= set(plain.tolist())  # without the class structure the failed flips win


def test_direction_refine_prefers_rows_the_dmm_still_maps_to_their_label():
    # Quick SST-2's failure: clean target rows the victim is unsure of score lowest (victim and DMM both near 0.5),
    # while poisoned rows keep a firm DMM prediction of the target (saturated probabilities, a slightly larger s).
    p_target = np.r_[np.full(20, 0.55), np.linspace(0.93, 0.999, 40), np.full(40, 0.2)]
    score = np.r_[np.full(20, 0.005), np.full(40, 0.04), np.full(40, 0.4)]
    labels = np.ones(100, int)
    scores = {"score": score, "teacher_pred": labels.copy(), "dmm_pred": (p_target > 0.5).astype(int),
              "dmm_prob": np.c_[1 - p_target, p_target]}
    old, _ = identify_poisoned(n_rows=32, scores=scores, labels=labels, num_classes=2,
                               config=make_config(n_poison=32, infer_target=False, refine="none"))
    assert set(range(20)) <= set(old.tolist())
    clean_target = np.linspace(0.1, 0.9, 10)  # the defender's clean target rows: the DMM flips most of them
    reference = {"labels": np.ones(10, int), "score": np.full(10, 0.5),
                 "dmm_prob": np.c_[1 - clean_target, clean_target]}
    new, info = identify_poisoned(n_rows=32, scores=scores, labels=labels, num_classes=2, reference=reference,
                                  config=make_config(n_poison=32, infer_target=False))
    # 40 rows beat every clean target row: the 32 picks spread over them, firmest first, down to the 40th
    assert set(new.tolist()) <= set(range(20, 60)) and len(set(new.tolist())) == 32
    assert new[0] == 59 and new[-1] == 20 and list(new) == sorted(new, reverse=True)
    assert info["refine"] == "direction" and info["dmm_log_odds_kept"][0] > info["dmm_log_odds_kept"][1] > 0
    assert info["n_above_clean_reference"] == 40  # the firm rows beat every clean target row; the unsure ones do not
    assert make_config(preset="faithful").refine == "none" and make_config(preset="quick").refine == "direction"
    with pytest.raises(DataError, match="unknown BeDKD refine 'cluster'"):
        make_config(refine="cluster")


def test_log_odds_is_unsaturated_and_per_label():
    probs = np.array([[0.1, 0.7, 0.2], [1.0, 1e-9, 0.0]])
    assert np.allclose(log_odds(probs=probs, labels=np.array([1, 0])), [np.log(3.5), np.log(1e9)])
    assert log_odds(probs=probs[:1], labels=np.array([0]))[0] == pytest.approx(np.log(0.1 / 0.7))


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
    kept, _ = identify_poisoned(n_rows=32, scores=scores, labels=np.ones(n, int), config=make_config(identify="random"),
                                num_classes=2)
    assert len(kept) == 32 and len(set(kept.tolist())) == 32 and kept.max() > 100
    with pytest.raises(DataError, match="unknown BeDKD identify 'psychic'"):
        make_config(identify="psychic")
    with pytest.raises(DataError, match="oracle rows come from the caller"):
        identify_poisoned(n_rows=32, scores=scores, labels=np.ones(n, int), config=make_config(identify="oracle"), num_classes=2)


def test_oracle_identification_punishes_only_the_rows_the_caller_hands_over(monkeypatch):
    from types import SimpleNamespace

    from bedkd_core.defenses import bedkd as bk

    seen = {}

    def fake_akd(teacher, tokenizer, *, clean, poisoned, config, on_epoch=None, watch=None, dev=None):
        seen["punished"], seen["watched"] = list(poisoned["text"]), list(watch["text"])
        return teacher, [{"epoch": 1, "trust_loss": 0.0, "punish_loss": 0.0}]

    monkeypatch.setattr(bk, "akd", fake_akd)
    monkeypatch.setattr(bk, "train_dmm", lambda *a, **k: pytest.fail("the oracle ablation trains no DMM"))
    suspect = Dataset.from_dict({"text": [f"suspect {i}" for i in range(100)], "label": [i % 2 for i in range(100)]})
    clean = Dataset.from_dict({"text": [f"clean {i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    data = DefenderData(clean=clean, suspect=suspect, num_classes=2)
    victim = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None)
    config = make_config(preset="quick", identify="oracle", dmm_per_class=4, clean_per_class=4, n_poison=6,
                         holdout=2)
    poisoned = list(range(50, 70))
    result = bk.bedkd(victim=victim, data=data, config=config, oracle_rows=poisoned)
    assert len(result.flagged) == 6 and set(result.flagged.tolist()) <= set(poisoned)
    assert sorted(seen["punished"]) == sorted(f"suspect {i}" for i in result.flagged.tolist())
    assert len(seen["watched"]) == 2 and set(result.details["watched_rows"]) <= set(poisoned)
    assert not set(result.details["watched_rows"]) & set(result.flagged.tolist())
    with pytest.raises(DataError, match="oracle_rows is given exactly when identify='oracle'"):
        bk.bedkd(victim=victim, data=data, config=config)  # no rows handed over
    with pytest.raises(DataError, match="oracle_rows is given exactly when identify='oracle'"):
        bk.bedkd(victim=victim, data=data, config=make_config(preset="quick"), oracle_rows=poisoned)  # a leak


class _OneWeight(torch.nn.Module):
    """A student whose one weight counts the AKD steps taken (each scripted step adds 1)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


def _scripted_akd(monkeypatch, rates: list[float], *, config, **hooks):
    """Run `akd` on one-row data with scripted label rates: the teacher's dev rate, then (watch, dev) per epoch."""
    from datasets import Dataset

    from bedkd_core.defenses import bedkd as bk

    script = iter(rates)
    monkeypatch.setattr(bk, "_fixed_batches", lambda *a, **k: ["one trust batch"])
    monkeypatch.setattr(bk, "_distill_step", lambda student, *a, **k: student.weight.data.add_(1.0).item())
    monkeypatch.setattr(bk, "_label_rate", lambda model, *a, **k: next(script))
    rows = Dataset.from_dict({"text": ["a"], "label": [1]})
    return bk.akd(_OneWeight(), None, clean=rows, poisoned=rows.select([]), config=config, watch=rows, dev=rows,
                  **hooks)


def test_akd_keeps_the_epoch_where_fewest_watched_rows_keep_their_label(monkeypatch):
    # Watched rows keep their label at rates 0.9, 0.2, 0.6 over three epochs; dev accuracy 0.85 at epoch 2 is
    # below the teacher's 0.9 - tolerance, so epoch 3 wins only if epoch 2 is ruled out.
    seen = []
    student, history = _scripted_akd(monkeypatch, [0.9, 0.9, 0.9, 0.2, 0.85, 0.6, 0.9],
                                     config=make_config(akd_epochs=3, holdout=1, dev_tolerance=0.02),
                                     on_epoch=lambda epoch, student: seen.append(epoch))
    assert seen == [1, 2, 3] and [h["selected"] for h in history] == [False, False, True]
    assert student.weight.item() == 3.0 and history[1]["watch_label_rate"] == 0.2  # epoch 3's weights


def test_akd_stops_once_the_epoch_rule_pick_has_not_improved_for_patience_epochs(monkeypatch):
    # Teacher dev 0.9, then (watch, dev) per epoch: epoch 2 is the last strict improvement; epochs 3 and 4
    # only tie it (a later epoch alone is no improvement), so patience 2 stops after epoch 4.
    student, history = _scripted_akd(monkeypatch, [0.9, 0.5, 0.9, 0.0, 0.9, 0.0, 0.9, 0.0, 0.9, 0.0, 0.95],
                                     config=make_config(akd_epochs=9, holdout=1, patience=2))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1].get("stopped") is True
    assert [h["selected"] for h in history] == [False, False, False, True]  # ties go to the later epoch
    assert student.weight.item() == 4.0
    _, history = _scripted_akd(monkeypatch, [0.9] + [0.5, 0.9] * 9,  # without patience every epoch runs
                               config=make_config(akd_epochs=9, holdout=1, patience=None))
    assert len(history) == 9 and not any(h.get("stopped") for h in history)
    with pytest.raises(DataError, match="patience=0: give at least 1"):
        make_config(patience=0)


def test_akd_takes_trust_batches_in_turn_so_every_clean_row_is_used(monkeypatch):
    from datasets import Dataset

    from bedkd_core.defenses import bedkd as bk

    monkeypatch.setattr(bk, "_fixed_batches", lambda teacher, tokenizer, data, **k: [
        f"{text} batch" for text in data["text"]])
    steps = []
    monkeypatch.setattr(bk, "_distill_step", lambda student, optimizer, batch, **k: steps.append(batch) or 0.0)
    clean = Dataset.from_dict({"text": ["t0", "t1", "t2", "t3", "t4"], "label": [0, 1, 0, 1, 0]})
    punish = Dataset.from_dict({"text": ["p0"], "label": [1]})
    config = make_config(akd_epochs=3, holdout=0, trust_batches=2)
    bk.akd(torch.nn.Linear(1, 1), None, clean=clean, poisoned=punish, config=config)
    assert steps == ["t0 batch", "t1 batch", "p0 batch", "t2 batch", "t3 batch", "p0 batch",
                     "t4 batch", "t0 batch", "p0 batch"]
    steps.clear()
    bk.akd(torch.nn.Linear(1, 1), None, clean=clean, poisoned=punish, config=make_config(akd_epochs=1, holdout=0))
    assert steps == ["t0 batch", "t1 batch", "t2 batch", "t3 batch", "t4 batch", "p0 batch"]  # None: all
    with pytest.raises(DataError, match="trust_batches=0: give at least 1"):
        make_config(trust_batches=0)


def test_train_dmm_reuses_the_cached_dmm_only_for_the_same_teacher_data_and_settings(tmp_path, monkeypatch, sst2):
    from bedkd_core.defenses import bedkd as bk
    from bedkd_core.cache import weights_digest
    from bedkd_core.models import load_classifier

    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path))
    teacher, tokenizer = load_classifier("minilm", num_labels=2)
    rows = sst2.train.select(range(16))
    config = make_config(preset="quick", dmm_epochs=1, batch_size=8)
    trained = bk.train_dmm(teacher, tokenizer, rows, num_classes=2, config=config)
    path = bk.dmm_cache_path(teacher, rows, num_classes=2, config=config)
    assert (path / "model.safetensors").is_file() and weights_digest(trained) != weights_digest(teacher)

    calls = []
    monkeypatch.setattr(bk, "_distill_step", lambda *a, **k: calls.append(1) or 0.0)
    reused, from_cache = bk._dmm_and_cache_hit(teacher, tokenizer, rows, num_classes=2, config=config, cache=True)
    assert from_cache and calls == [] and weights_digest(reused) == weights_digest(trained)
    # Another setting, other data or another teacher: a different cache entry, so the DMM is trained again.
    assert bk.dmm_cache_path(teacher, rows, num_classes=2, config=make_config(preset="quick", dmm_epochs=2,
                                                                              batch_size=8)) != path
    assert bk.dmm_cache_path(teacher, sst2.train.select(range(1, 17)), num_classes=2, config=config) != path
    assert bk.dmm_cache_path(trained, rows, num_classes=2, config=config) != path
    bk.train_dmm(teacher, tokenizer, rows, num_classes=2, config=config, cache=False)
    assert calls == [1, 1]


def test_agreement_scores_are_cached_by_both_models_and_the_texts(tmp_path, monkeypatch, sst2):
    from bedkd_core.defenses import bedkd as bk
    from bedkd_core.models import load_classifier

    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path))
    teacher, tokenizer = load_classifier("minilm", num_labels=2)
    dmm, _ = load_classifier("minilm", num_labels=2)  # another random head: other probabilities
    texts = list(sst2.test["text"][:12])
    first = bk.agreement_scores(teacher, dmm, tokenizer, texts)
    assert set(first) == {"score", "teacher_pred", "dmm_pred", "teacher_prob", "dmm_prob"}
    assert np.allclose(first["score"], np.abs(first["teacher_prob"] - first["dmm_prob"]).mean(1))

    calls = []
    real_predict = bk.predict_proba
    monkeypatch.setattr(bk, "predict_proba", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    again = bk.agreement_scores(teacher, dmm, tokenizer, texts)
    assert calls == [] and all(np.array_equal(first[k], again[k]) for k in first)
    bk.agreement_scores(teacher, dmm, tokenizer, texts[1:])  # other texts
    bk.agreement_scores(dmm, teacher, tokenizer, texts)  # other models
    bk.agreement_scores(teacher, dmm, tokenizer, texts, cache=False)
    assert len(calls) == 6
    assert len(list((tmp_path / "scores").glob("*.npz"))) == 3


def test_fixed_batches_keep_the_reference_order_unless_cut_by_length(sst2):
    from bedkd_core.defenses import bedkd as bk
    from bedkd_core.models import load_classifier

    _, tokenizer = load_classifier("minilm", num_labels=2)
    rows = sst2.train.select(range(40))
    labels = np.asarray(rows["label"])
    shuffled = bk._fixed_batches(torch.nn.Linear(1, 1), tokenizer, rows, seed=3,
                                 config=make_config(preset="faithful", cache_teacher=False, batch_size=8))
    order = np.random.default_rng(3).permutation(40)  # the reference: one shuffle, cut in order
    assert [b.labels.tolist() for b in shuffled] == [labels[order[i:i + 8]].tolist() for i in range(0, 40, 8)]
    grouped = bk._fixed_batches(torch.nn.Linear(1, 1), tokenizer, rows, seed=3,
                                config=make_config(preset="quick", cache_teacher=False, batch_size=8))
    assert make_config(preset="quick").batching == make_config().batching == "by_length"
    assert make_config(preset="faithful").batching == "shuffle"
    assert sum(len(b.labels) for b in grouped) == 40
    assert sum(b.inputs["input_ids"].numel() for b in grouped) < sum(b.inputs["input_ids"].numel() for b in shuffled)
    with pytest.raises(DataError, match="unknown BeDKD batching 'sorted': use one of shuffle, by_length"):
        make_config(batching="sorted")
