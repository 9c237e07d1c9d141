"""BeDKD for a defender who does not know the poison rate: the evidence count and the dev-set stopping rule."""
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from bedkd_core.data import DataError
from bedkd_core.defenses.bedkd import (dev_tolerance, evidence_count, identify_poisoned, make_config,
                                       select_epoch)


def _table(n_poisoned, seed=0, n_second=0):
    """1,000 suspect rows whose DMM flips most clean rows, `n_poisoned` class-1 rows it still maps firmly to
    their label (the backdoor), and 64 clean reference rows per class; `n_second` class-0 rows are a second
    backdoor's, with the other target."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 1000)
    p_label = rng.uniform(0.05, 0.8, 1000)
    score = rng.uniform(0.0, 0.5, 1000)
    poison = rng.choice(np.flatnonzero(labels == 1), n_poisoned, replace=False)
    if n_second:
        poison = np.concatenate([poison, rng.choice(np.flatnonzero(labels == 0), n_second, replace=False)])
        n_poisoned += n_second
    p_label[poison] = rng.uniform(0.9, 0.99, n_poisoned)
    score[poison] = rng.uniform(0.0, 0.08, n_poisoned)
    probs = np.where(labels[:, None] == np.arange(2), p_label[:, None], 1 - p_label[:, None])
    scores = {"score": score, "teacher_pred": labels.copy(), "dmm_pred": probs.argmax(1), "dmm_prob": probs}
    ref_labels = np.array([0] * 64 + [1] * 64)
    ref_p = rng.uniform(0.05, 0.85, 128)
    reference = {"labels": ref_labels, "score": rng.uniform(0.0, 0.5, 128),
                 "dmm_prob": np.where(ref_labels[:, None] == np.arange(2), ref_p[:, None], 1 - ref_p[:, None])}
    return dict(scores=scores, labels=labels, reference=reference, num_classes=2), set(poison.tolist())


# The fixed and quick presets' picks on these tables, computed by identify_poisoned before `count` existed
# (commit 4941df7): stored results must keep meaning what they meant.
PICKS_BEFORE = {
    10: [895, 7, 518, 667, 458, 759, 718, 217, 477, 282, 206, 883, 672, 346, 664, 331, 912, 532, 144, 40, 300, 568,
         226, 684, 501, 323, 462, 694, 604, 566, 239, 162, 268, 473, 371, 347, 680, 186, 897, 468, 107, 176, 767, 935,
         832, 531, 43, 545],
    100: [49, 17, 30, 422, 374, 661, 747, 789, 824, 787, 16, 478, 299, 831, 863, 29, 671, 55, 561, 485, 410, 945, 520,
          225, 57, 479, 563, 75, 600, 380, 451, 370, 769, 212, 77, 74, 69, 452, 101, 253, 12, 112, 467, 140, 625, 405,
          314, 910],
}


@pytest.mark.parametrize("n_poisoned", [10, 100])
@pytest.mark.parametrize("preset", ["fixed", "quick"])
def test_existing_presets_pick_the_same_rows_as_before(n_poisoned, preset):
    table, _ = _table(n_poisoned)
    rows, info = identify_poisoned(**table, n_rows=48, config=make_config(preset=preset))
    assert rows.tolist() == PICKS_BEFORE[n_poisoned] and "count" not in info
    assert make_config(preset=preset).count == "fixed" and make_config(preset=preset).dev_rule == "fixed"


def test_evidence_count_finds_few_poisoned_rows_where_the_fixed_count_fills_its_quota():
    # 10 poisoned rows: the class excess under tau is noise and points at the wrong class, so the fixed count
    # fills its 48 rows with clean ones; the evidence count takes the 10 rows beyond the clean reference.
    table, poison = _table(10)
    fixed, info = identify_poisoned(**table, n_rows=48, config=make_config(preset="quick"))
    assert len(fixed) == 48 and not set(fixed.tolist()) & poison and info["inferred_target"] == 0
    rows, info = identify_poisoned(**table, n_rows=48, config=make_config(preset="quick-adaptive"))
    assert set(rows.tolist()) == poison and info["count"]["decision"] == "fewer than asked"


def test_evidence_count_punishes_nothing_when_nothing_stands_out():
    table, _ = _table(0)
    fixed, _ = identify_poisoned(**table, n_rows=48, config=make_config(preset="quick"))
    assert len(fixed) == 48  # all clean
    rows, info = identify_poisoned(**table, n_rows=48, config=make_config(preset="quick-adaptive"))
    assert len(rows) == 0 and info["count"]["supported"] == 0
    assert info["count"]["decision"].startswith("trust-only")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_poisoned", [10, 20, 30, 100])
def test_evidence_count_picks_only_what_stands_out_and_never_more_than_asked(n_poisoned, seed):
    table, poison = _table(n_poisoned, seed=seed)
    config = make_config(preset="quick-adaptive")
    rows, info = identify_poisoned(**table, n_rows=48, config=config)
    count = info["count"]
    assert info["inferred_target"] == count["target"] == 1  # where the rows beyond the clean reference pile up
    assert len(rows) == count["supported"] <= 48 and len(set(rows.tolist())) == len(rows)
    assert abs(len(rows) - min(48, n_poisoned)) <= 2
    assert len(set(rows.tolist()) & poison) >= 0.9 * len(rows)
    assert count["decision"] == ("as asked" if len(rows) == 48 else "fewer than asked")
    n_watch = round(len(rows) * config.holdout / (config.n_poison + config.holdout))
    assert len(rows) - n_watch <= config.n_poison


def test_evidence_count_formula_and_its_least_harm_floor():
    config = make_config(preset="adaptive")  # n_poison 32, holdout 16, min_punish 4
    sizes = np.array([1000, 500])
    count = evidence_count(beyond=np.array([10, 25]), sizes=sizes, config=config, n_rows=48)
    assert count["target"] == 1 and count["expected_clean"] == 5.0 and count["span"] == count["supported"] == 20
    assert count["beyond_clean_reference"] == {"0": 10, "1": 25} and count["decision"] == "fewer than asked"
    count = evidence_count(beyond=np.array([0, 300]), sizes=sizes, config=config, n_rows=48)
    assert count["span"] == 300 and count["supported"] == 48 and count["decision"] == "as asked"
    count = evidence_count(beyond=np.array([0, 5]), sizes=sizes, config=config, n_rows=48)
    assert count["supported"] == 0 and count["decision"].startswith("trust-only")  # 3 punished < min_punish
    assert evidence_count(beyond=np.array([0, 0]), sizes=sizes, config=config, n_rows=48)["target"] is None
    with pytest.raises(DataError, match="count='evidence'.*scan='rank'"):
        make_config(preset="faithful", count="evidence")


def test_stderr_tolerance_follows_the_dev_set():
    fixed = make_config(preset="quick")
    assert dev_tolerance(config=fixed, teacher_accuracy=0.78, n_dev=128) == 0.02
    se = make_config(preset="quick-adaptive")
    assert se.dev_k == 2.0
    assert dev_tolerance(config=se, teacher_accuracy=0.78, n_dev=128) == pytest.approx(2 * math.sqrt(.78 * .22 / 128))
    assert dev_tolerance(config=make_config(dev_rule="stderr", dev_k=1.0), teacher_accuracy=0.98,
                         n_dev=160) == pytest.approx(math.sqrt(.98 * .02 / 160))
    assert dev_tolerance(config=se, teacher_accuracy=1.0, n_dev=160) == 1 / 160  # at least one dev row


def test_select_epoch_replays_the_rule_on_a_stored_history():
    # The shape of quick OLID AddSent: the watched rows lose their label from epoch 4 on, dev dips meanwhile.
    dev = [0.766, 0.773, 0.773, 0.766, 0.727, 0.703, 0.703, 0.711, 0.727, 0.73, 0.72, 0.74]
    watch = [1.0, 1.0, 1.0, 0.56, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    history = [{"epoch": e + 1, "dev_accuracy": d, "watch_label_rate": w} for e, (d, w) in enumerate(zip(dev, watch))]
    assert select_epoch(history=history, dev_floor=0.78 - 0.02) == 4
    assert select_epoch(history=history, dev_floor=0.78 - 2 * math.sqrt(.78 * .22 / 128)) == 12


def test_akd_records_the_dev_floor_of_its_rule(monkeypatch):
    from bedkd_core.defenses import bedkd as bk

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    rates = iter([0.75, 0.9, 0.70, 0.1, 0.72])  # teacher dev, then (watch, dev) per epoch
    monkeypatch.setattr(bk, "_fixed_batches", lambda *a, **k: ["one trust batch"])
    monkeypatch.setattr(bk, "_distill_step", lambda student, *a, **k: student.weight.data.add_(1.0).item())
    monkeypatch.setattr(bk, "_label_rate", lambda model, *a, **k: next(rates))
    rows = Dataset.from_dict({"text": ["a"] * 128, "label": [1] * 128})
    config = make_config(preset="quick-adaptive", akd_epochs=2)
    _, history = bk.akd(Tiny(), None, clean=rows, poisoned=rows.select([]), config=config, watch=rows, dev=rows)
    floor = 0.75 - 2 * math.sqrt(0.75 * 0.25 / 128)
    assert history[0]["dev_floor"] == pytest.approx(floor) and [h["selected"] for h in history] == [False, True]


def test_on_real_scores_the_evidence_count_shrinks_with_the_poisoned_rows(quick_badnets):
    # The quick SST-2 BadNets victim (shared cache) and its DMM's scores on the defender's data. The oracle flags
    # only build the thinned suspect sets (a row's scores do not depend on the other rows) and grade the picks.
    from bedkd_core.defenses import bedkd as bk

    data = quick_badnets.defender_data()
    assert "is_poisoned" not in data.suspect.column_names
    config = make_config(preset="quick-adaptive")
    dmm_clean, akd_clean = bk.split_clean(data.clean, num_classes=2, dmm_per_class=config.dmm_per_class,
                                          clean_per_class=config.clean_per_class, seed=config.seed)
    teacher, tokenizer = quick_badnets.victim.model, quick_badnets.victim.tokenizer
    dmm = bk.train_dmm(teacher, tokenizer, dmm_clean, num_classes=2, config=config)
    scores = bk.agreement_scores(teacher, dmm, tokenizer, list(data.suspect["text"]), max_length=config.max_length)
    reference = bk.agreement_scores(teacher, dmm, tokenizer, list(akd_clean["text"]), max_length=config.max_length)
    reference["labels"] = np.asarray(akd_clean["label"])
    labels, poisoned = np.asarray(data.suspect["label"]), np.asarray(quick_badnets.poisoned.is_poisoned, bool)
    for keep in (200, 20, 0):
        rows = np.r_[np.flatnonzero(~poisoned), np.flatnonzero(poisoned)[:keep]]
        sub = {name: value[rows] for name, value in scores.items()}
        picks = {}
        for preset in ("quick", "quick-adaptive"):
            kept, info = identify_poisoned(scores=sub, labels=labels[rows], reference=reference, n_rows=48,
                                           num_classes=2, config=make_config(preset=preset))
            picks[preset] = (kept, info)
        kept, info = picks["quick-adaptive"]
        assert len(picks["quick"][0]) == 48  # the fixed count always fills its quota
        assert len(kept) <= min(48, keep + 2)
        assert poisoned[rows][kept].mean() >= 0.9 if len(kept) else info["count"]["decision"].startswith("trust")
        if keep == 200:
            assert info["count"]["decision"] == "as asked" and kept.tolist() == picks["quick"][0].tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_several_targets_punishes_both_backdoors_where_one_target_takes_one(seed):
    # Two backdoors, 100 class-1 and 60 class-0 poisoned rows: the one-target rule reads class 0's poisoned
    # rows as its clean rate and punishes class 1 only; `several` weighs each class against its own clean
    # reference rows and gives each target the rows asked for one backdoor, as many as its excess supports.
    table, poison = _table(100, seed=seed, n_second=60)
    one, _ = identify_poisoned(**table, n_rows=48, config=make_config(preset="quick-adaptive"))
    assert set(table["labels"][one].tolist()) == {1}
    rows, info = identify_poisoned(**table, n_rows=48,
                                   config=make_config(preset="quick-adaptive", targets="several"))
    count = info["count"]
    assert count["target_evidence"]["verdict"] == "several" and set(count["targets"]) == {"0", "1"}
    assert count["targets"] == {c: min(48, count["spans"][c]) for c in ("0", "1")}
    assert len(rows) == sum(count["targets"].values()) == count["supported"] > 48
    assert len(set(rows.tolist())) == len(rows) and count["asked"] == 96
    by_class = np.bincount(table["labels"][rows], minlength=2)
    assert by_class.tolist() == [count["targets"]["0"], count["targets"]["1"]] and by_class.min() > 30
    assert len(set(rows.tolist()) & poison) >= 0.9 * len(rows)


@pytest.mark.parametrize("n_poisoned", [0, 10, 100])
def test_several_targets_finds_one_or_no_target_where_there_is_one_or_none(n_poisoned):
    table, poison = _table(n_poisoned)
    rows, info = identify_poisoned(**table, n_rows=48,
                                   config=make_config(preset="quick-adaptive", targets="several"))
    count = info["count"]
    if n_poisoned:
        assert set(count["targets"]) == {"1"} and count["target_evidence"]["verdict"] == "clear"
        assert set(rows.tolist()) <= poison and len(rows) == min(48, n_poisoned)
    else:
        assert len(rows) == 0 and count["targets"] == {} and count["target_evidence"]["verdict"] == "weak"
        assert count["decision"] == "trust-only: no class's rows stand out from its clean reference"


def test_several_targets_formula_weighs_each_class_against_chance():
    config = make_config(preset="quick-adaptive", targets="several")
    # 64 reference rows per class: a clean row beats all of them with probability 1/65.
    count = evidence_count(beyond=np.array([201, 165]), sizes=np.array([1300, 650]), config=config, n_rows=48,
                           reference_sizes=[64, 64])
    assert count["expected_clean"] == [20.0, 10.0] and count["spans"] == {"0": 181, "1": 155}
    assert count["targets"] == {"0": 48, "1": 48} and count["supported"] == count["asked"] == 96
    # One backdoor: the other class's rate (2 of 1,000) is the lower, tighter estimate of the clean rate.
    count = evidence_count(beyond=np.array([2, 30]), sizes=np.array([1000, 1000]), config=config, n_rows=48,
                           reference_sizes=[64, 64])
    assert count["expected_clean"] == [15.4, 2.0] and count["targets"] == {"1": 28}
    assert count["decision"] == "fewer than asked"
    few = evidence_count(beyond=np.array([0, 5]), sizes=np.array([1000, 1000]), config=config, n_rows=48,
                         reference_sizes=[64, 64])
    assert few["supported"] == 0 and few["decision"].startswith("trust-only: the evidence supports too few")
    with pytest.raises(DataError, match="reference_sizes"):
        evidence_count(beyond=np.array([0, 30]), sizes=np.array([1000, 1000]), config=config, n_rows=48)
    with pytest.raises(DataError, match="targets='several'.*count='evidence'"):
        make_config(preset="quick", targets="several")
