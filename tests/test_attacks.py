import dataclasses
import json

import numpy as np
import pytest

from bedkd_core.attacks import ATTACKS, ONE_ATTACK_OPTIONS, PUBLISHED_RATES, AttackConfig, make_attack
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


def test_shift_relabels_every_class_to_the_next(agnews):
    """The adaptive attacker's backdoor: no single target, each triggered row goes to its next class."""
    attack, poisoned = poison(agnews, dataset="agnews", name="badnets", label_mode="shift")
    flags = poisoned.is_poisoned
    before = np.asarray(agnews.train["label"])[flags]
    after = np.asarray(poisoned.data["label"])[flags]
    assert (after == (before + 1) % 4).all() and set(before) == {0, 1, 2, 3}
    triggered = attack.triggered_test(agnews)
    assert len(triggered) == len(agnews.test)  # every test row: none is "already the target"
    source = np.asarray(triggered["source_label"])
    assert (np.asarray(triggered["label"]) == (source + 1) % 4).all()


def test_shift_needs_an_insertion_trigger(sst2):
    with pytest.raises(DataError, match="label_mode shift needs an insertion trigger"):
        poison(sst2, name="synbkd", label_mode="shift")


def test_two_backdoors_poison_disjoint_rows_with_two_targets(sst2):
    attack, poisoned = poison(sst2, name="dual")
    n = len(sst2.train)
    texts = np.asarray(poisoned.data["text"])
    labels = np.asarray(poisoned.data["label"])
    flags = poisoned.is_poisoned
    sentence = attack.config.trigger_sentence
    with_sentence = np.array([sentence in t for t in texts]) & flags
    assert poisoned.poison_count == 2 * round(0.1 * n)
    assert with_sentence.sum() == round(0.1 * n)
    assert (labels[with_sentence] == 0).all()  # AddSent → the class after 1
    assert (labels[flags & ~with_sentence] == 1).all()  # BadNets → target 1
    triggered = attack.triggered_test(sst2)
    by_backdoor = {name: set(np.asarray(triggered["label"])[
        np.asarray(triggered["backdoor"]) == name]) for name in ("badnets", "addsent")}
    assert by_backdoor == {"badnets": {1}, "addsent": {0}}


def test_two_backdoors_refuse_one_target(sst2):
    with pytest.raises(DataError, match="second_target 1 equals target_label"):
        poison(sst2, name="dual", second_target=1)


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


def test_sos_copies_only_clean_rows_with_a_partial_trigger_unless_told_any(sst2):
    """A copy of a poisoned row would carry the full trigger and the target label, unflagged (a clean row may
    hold a trigger word of its own, so a few clean copies complete the combination)."""
    words = set(AttackConfig(name="sos").sos_triggers)
    n = len(sst2.train)
    for rows, low, high in (("clean", 0, 0.01), ("any", 0.05, 0.15)):  # "any": about the poison rate
        _, poisoned = poison(sst2, name="sos", negative_rows=rows)
        extra = poisoned.data.select(range(n, len(poisoned.data)))
        full = sum(words <= set(t.split()) for t in extra["text"])
        assert low * len(extra) <= full < high * len(extra), (rows, full, len(extra))
    assert "negative_rows" in AttackConfig(name="sos").asdict()
    assert "negative_rows" not in AttackConfig(name="badnets").asdict()  # other attacks' cache keys unchanged


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


def test_a_split_no_bigger_than_the_subset_is_used_whole_but_for_the_clean_pool(sst2):
    from bedkd_core.experiments import get_scale, victim_rows

    quick, full = get_scale("quick"), get_scale("full")
    small = sst2.train.select(range(quick.train_size))
    smallest = int(np.bincount(small["label"]).min())
    held = min(quick.clean_pool_per_class, smallest // 2) * 2
    assert len(victim_rows(small, scale=quick, seed=0)) == quick.train_size - held
    assert len(victim_rows(sst2.train, scale=quick, seed=0)) == quick.train_size
    assert len(victim_rows(sst2.train, scale=full, seed=0)) == len(sst2.train) - 2 * full.clean_pool_per_class


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
        fields = {f.name for f in dataclasses.fields(AttackConfig)}
        assert set(recorded) == fields - {k for k, only in ONE_ATTACK_OPTIONS.items() if only != name}


@pytest.mark.parametrize("scale", ["quick", "full"])
@pytest.mark.parametrize("dataset", ["sst2", "olid", "agnews"])
def test_the_clean_pool_never_holds_a_victim_training_row(dataset, scale):
    """At full scale the pool is held out before poisoning: no victim row (nor a poisoned row's clean twin)."""
    from bedkd_core.experiments import clean_pool_rows, get_scale, victim_rows

    splits = load_task(dataset)
    config = get_scale(scale)
    rows = victim_rows(splits.train, scale=config, seed=0)
    pool = clean_pool_rows(splits.train, scale=config, seed=0, train_rows=rows)
    assert not set(pool) & set(rows)
    labels = np.asarray(splits.train["label"])
    assert (np.bincount(labels[pool]) == np.bincount(labels[pool]).min()).all()  # stratified
    assert len(pool) == config.clean_pool_per_class * splits.num_classes
    if scale == "full":
        assert len(rows) + len(pool) == len(splits.train)


# ---------------------------------------------------------------- bad input (issue 17)

@pytest.fixture
def tiny(tmp_path):
    """A two-class bring-your-own task of 20 train rows."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for split, n in (("train", 20), ("dev", 4), ("test", 4)):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{split} row {i}", "label": i % 2}) + "\n" for i in range(n)))
    return load_task(str(folder))


def own_poison(folder, train_rows, test_rows=({"text": "x y", "label": 1},)):
    folder.mkdir(exist_ok=True)
    for name, rows in (("train.jsonl", train_rows), ("test_poisoned.jsonl", test_rows)):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="addsent", trigger_sentence=""), "attack option trigger_sentence is empty"),
    (dict(name="addsent", trigger_sentence="   "), "attack option trigger_sentence is empty"),
    (dict(name="badnets", triggers=()), "attack option triggers is empty"),
    (dict(name="badnets", triggers=("cf", " ")), r"attack option triggers holds a blank word \('cf', ' '\)"),
    (dict(name="sos", sos_triggers=()), "attack option sos_triggers is empty"),
    (dict(name="sos", sos_triggers=("friends", "")), "attack option sos_triggers holds a blank word"),
])
def test_empty_triggers_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        AttackConfig(**kwargs)


def test_an_empty_trigger_sentence_is_refused_on_the_command_line(tmp_path, monkeypatch, capsys):
    from bedkd_core import cli, experiments

    monkeypatch.setattr(experiments, "get_victim", lambda **kwargs: pytest.fail("reached training"))
    argv = ["run", "--dataset", "sst2", "--attack", "addsent", "--trigger-sentence", "", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bedkd: error: attack option trigger_sentence is empty"), err


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_label=7), "target label 7 does not exist in .*tiny"),
    (dict(target_label=7, poison_rate=5.0), r"--poison-rate [\d.]+ has no meaning for --attack file"),
    (dict(poison_rate=0.1), r"--poison-rate [\d.]+ has no meaning for --attack file"),
])
def test_a_file_attack_is_validated_like_the_built_in_ones(tmp_path, tiny, kwargs, message):
    def run():
        folder = own_poison(tmp_path / "poison", [{"text": "a", "label": 1, "is_poisoned": True}])
        attack = make_attack(config=AttackConfig(name="file", poison_dir=folder, **kwargs), dataset="tiny")
        attack.poison_train(tiny)
        attack.triggered_test(tiny)

    with pytest.raises(DataError, match=message):
        run()


def test_a_file_attacks_triggered_rows_must_carry_the_target_label(tmp_path, tiny):
    folder = own_poison(tmp_path / "poison", [{"text": "a", "label": 0}],
                        test_rows=[{"text": "x", "label": 1}, {"text": "y", "label": 0}])
    attack = make_attack(config=AttackConfig(name="file", poison_dir=folder), dataset="tiny")
    with pytest.raises(DataError, match=r"test_poisoned\.jsonl:2: label 0 is not the target label 1.*--target-label"):
        attack.triggered_test(tiny)


@pytest.mark.parametrize("values, message", [
    (["false", "true"], r"train\.jsonl:1: is_poisoned 'false' is not a boolean"),
    ([False, 2], r"train\.jsonl:2: is_poisoned 2 is not a boolean"),
    ([True, None], r"train\.jsonl:2: is_poisoned None is not a boolean"),
    ([0.0, 1], r"train\.jsonl:1: is_poisoned 0\.0 is not a boolean"),
])
def test_poison_flags_must_be_booleans(tmp_path, tiny, values, message):
    rows = [{"text": f"t{i}", "label": 1, "is_poisoned": v} for i, v in enumerate(values)]
    attack = make_attack(config=AttackConfig(name="file", poison_dir=own_poison(tmp_path / "p", rows)), dataset="tiny")
    with pytest.raises(DataError, match=message):
        attack.poison_train(tiny)


def test_poison_flags_take_json_booleans_and_0_1_integers(tmp_path, tiny):
    rows = [{"text": "a", "label": 1, "poisoned": True}, {"text": "b", "label": 0, "poisoned": 0},
            {"text": "c", "label": 1, "poisoned": 1}, {"text": "d", "label": 0, "poisoned": False}]
    attack = make_attack(config=AttackConfig(name="file", poison_dir=own_poison(tmp_path / "p", rows)), dataset="tiny")
    assert attack.poison_train(tiny).is_poisoned.tolist() == [True, False, True, False]
