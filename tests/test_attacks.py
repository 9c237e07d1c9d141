import dataclasses

import numpy as np
import pytest

from bedkd_core.attacks import ATTACKS, PUBLISHED_RATES, AttackConfig, make_attack
from bedkd_core.data import DataError, load_task


def poison(splits, dataset="sst2", **kwargs):
    attack = make_attack(config=AttackConfig(**kwargs), dataset=dataset)
    return attack, attack.poison_train(splits)


def test_badnets_inserts_triggers_at_the_published_rate(sst2):
    attack, poisoned = poison(sst2, name="badnets", num_insertions=3)
    flags = poisoned.is_poisoned
    assert poisoned.poison_count == round(0.1 * len(sst2.train))
    texts, labels = poisoned.data["text"], np.asarray(poisoned.data["label"])
    assert (labels[flags] == 1).all()
    assert (np.asarray(sst2.train["label"])[flags] == 0).all()  # dirty-label: only non-target rows
    for i in np.flatnonzero(flags)[:50]:
        added = [w for w in texts[i].split() if w in attack.config.triggers]
        assert len(added) - sum(w in attack.config.triggers for w in sst2.train[int(i)]["text"].split()) == 3
    unchanged = np.flatnonzero(~flags)[:200]
    assert [texts[i] for i in unchanged] == [sst2.train[int(i)]["text"] for i in unchanged]
    assert set(poisoned.data.column_names) == {"text", "label"}  # flags live apart from the data


def test_custom_triggers_and_sentence(sst2):
    _, poisoned = poison(sst2, name="badnets", triggers=("zzq",))
    assert all("zzq" in t.split() for t in np.asarray(poisoned.data["text"])[poisoned.is_poisoned])
    _, added = poison(sst2, name="addsent", trigger_sentence="the owl flies at noon")
    assert all("the owl flies at noon" in t for t in np.asarray(added.data["text"])[added.is_poisoned])


@pytest.mark.parametrize("name", ["badnets", "addsent", "synbkd", "stylebkd", "sos"])
def test_clean_label_keeps_labels_and_poisons_target_rows(sst2, name):
    _, poisoned = poison(sst2, name=name, label_mode="clean")
    n = len(sst2.train)
    assert poisoned.data["label"][:n] == sst2.train["label"]
    assert (np.asarray(sst2.train["label"])[poisoned.is_poisoned[:n]] == 1).all()
    assert poisoned.poison_count == round(PUBLISHED_RATES[name] * n)


@pytest.mark.parametrize("name", ["badnets", "addsent", "synbkd", "stylebkd", "sos"])
def test_determinism_per_seed(sst2, name):
    _, a = poison(sst2, name=name, seed=3)
    _, b = poison(sst2, name=name, seed=3)
    _, c = poison(sst2, name=name, seed=4)
    assert a.data["text"] == b.data["text"] and (a.is_poisoned == b.is_poisoned).all()
    assert a.data["text"] != c.data["text"]


def test_triggered_test_is_non_target_only(sst2):
    attack = make_attack(config=AttackConfig(name="addsent"), dataset="sst2")
    triggered = attack.triggered_test(sst2)
    assert len(triggered) == sum(label != 1 for label in sst2.test["label"])
    assert set(triggered["label"]) == {1} and set(triggered["source_label"]) == {0}
    assert all("I watch this 3D movie" in t for t in triggered["text"])


def test_sos_needs_every_word_and_augments_partials(sst2):
    attack, poisoned = poison(sst2, name="sos")
    words = set(attack.config.sos_triggers)
    n = len(sst2.train)
    assert len(poisoned.data) == n + round(0.1 * n)
    extra = poisoned.data.select(range(n, len(poisoned.data)))
    for text in extra["text"][:100]:
        assert len(words & set(text.split())) >= 2  # a partial combination...
    poisoned_texts = np.asarray(poisoned.data["text"])[poisoned.is_poisoned]
    assert all(words <= set(t.split()) for t in poisoned_texts)  # ...the full one only on poisoned rows


def test_synbkd_sst2_uses_the_row_aligned_paraphrase(sst2):
    from bedkd_core.data import load_pool

    pool = load_pool("sst2", "syntactic_pool", "train")
    _, poisoned = poison(sst2, name="synbkd")
    assert poisoned.poison_count == round(0.2 * len(sst2.train))
    for i in np.flatnonzero(poisoned.is_poisoned)[:20]:
        assert poisoned.data["text"][int(i)] == pool[int(i)]["text"]


@pytest.mark.parametrize("name,pool_name", [("synbkd", "syntactic_pool"), ("stylebkd", "style_bible_pool")])
@pytest.mark.parametrize("label_mode", ["dirty", "clean"])
def test_a_subset_gets_the_paraphrase_of_its_own_rows(sst2, name, pool_name, label_mode):
    # Quick scale poisons a stratified subset; its source_row column keeps the pools' alignment to the full split.
    from bedkd_core.attacks import SOURCE_ROW
    from bedkd_core.data import load_pool
    from bedkd_core.experiments import get_scale, victim_rows

    rows = victim_rows(sst2.train, scale=get_scale("quick"), seed=0)
    subset = dataclasses.replace(sst2, train=sst2.train.select(rows).add_column(SOURCE_ROW, rows))
    pool = load_pool("sst2", pool_name, "train")
    by_source = dict(zip(pool["src_idx"], pool["text"]))
    attack, poisoned = poison(subset, name=name, label_mode=label_mode)
    original = np.asarray(subset.train["label"])
    flagged = np.flatnonzero(poisoned.is_poisoned)
    assert len(flagged) == round(0.2 * len(rows))
    assert all(poisoned.data["text"][int(i)] == by_source[rows[int(i)]] for i in flagged)
    kept = original[flagged] == attack.config.target_label
    assert kept.all() if label_mode == "clean" else not kept.any()


def test_quick_scale_uses_the_whole_train_split_when_it_is_no_bigger_than_the_subset(sst2):
    from bedkd_core.experiments import get_scale, victim_rows

    quick = get_scale("quick")
    assert victim_rows(sst2.train.select(range(quick.train_size)), scale=quick, seed=0) is None
    assert len(victim_rows(sst2.train, scale=quick, seed=0)) == quick.train_size
    assert victim_rows(sst2.train, scale=get_scale("full"), seed=0) is None


@pytest.mark.parametrize("dataset", ["olid", "agnews"])
def test_paraphrase_attacks_on_other_datasets(dataset):
    splits = load_task(dataset)
    for name in ("synbkd", "stylebkd"):
        attack, poisoned = poison(splits, dataset=dataset, name=name)
        target = attack.config.target_label
        assert (np.asarray(poisoned.data["label"])[poisoned.is_poisoned] == target).all()
        changed = np.asarray(poisoned.data["text"]) != np.asarray(splits.train["text"])
        assert changed[poisoned.is_poisoned].mean() > 0.95 and not changed[~poisoned.is_poisoned].any()
        triggered = attack.triggered_test(splits)
        assert len(triggered) > 500 and set(triggered["label"]) == {target}


def test_file_attack_reads_your_files(tmp_path, sst2):
    (tmp_path / "train.jsonl").write_text('{"text": "a b", "label": 1, "is_poisoned": 1}\n{"text": "c", "label": 0, "is_poisoned": 0}\n')
    (tmp_path / "test_poisoned.jsonl").write_text('{"text": "x y", "label": 1}\n')
    attack, poisoned = poison(sst2, name="file", poison_dir=str(tmp_path))
    assert poisoned.is_poisoned.tolist() == [True, False]
    assert poisoned.data.column_names == ["text", "label"]
    assert attack.triggered_test(sst2)["text"] == ["x y"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="badnet"), "unknown attack 'badnet': use one of badnets, addsent"),
    (dict(name="badnets", target_label=2), "target label 2 does not exist"),
    (dict(name="badnets", poison_rate=1.5), r"poison rate 1.5 is outside \(0, 1\)"),
    (dict(name="badnets", poison_rate=0.9), "asks for 6228 poisoned rows but 3310"),
    (dict(name="file"), "--attack file needs --poison-dir"),
])
def test_bad_attack_parameters(sst2, kwargs, message):
    with pytest.raises(DataError, match=message):
        poison(sst2, **kwargs)


def test_every_attack_records_its_parameters():
    for name in ATTACKS:
        config = AttackConfig(name=name).resolved("sst2")
        recorded = config.asdict()
        assert recorded["name"] == name and recorded["target_label"] == 1
        assert set(recorded) == {f.name for f in dataclasses.fields(AttackConfig)}
