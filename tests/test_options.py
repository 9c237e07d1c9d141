"""One option schema: help and choices on the config fields, one coercion for the CLI, --set, YAML and Python,
and the library's reshaping kept every victim cache key (fast: no model is trained)."""
import argparse
import dataclasses

import pytest

from bedkd_core import options
from bedkd_core.attacks import AttackConfig
from bedkd_core.data import DataError
from bedkd_core.defenses import DEFENSES, make_defense_config
from bedkd_core.defenses.bedkd_config import PRESETS, BeDKDConfig
from bedkd_core.defenses.rap import RAPConfig
from bedkd_core.victim import VictimConfig

CONFIGS = [AttackConfig, VictimConfig] + [spec.config_cls for spec in DEFENSES.values()]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_help(cls):
    missing = [name for name, opt in options.options_of(cls).items() if not opt.help and name != "name"]
    assert not missing, f"{cls.__name__} fields without help (declare them with options.option): {missing}"


def test_command_line_text_is_parsed_by_the_field_type():
    assert options.coerce(BeDKDConfig, "tau", "0.05", text=True) == 0.05
    assert options.coerce(BeDKDConfig, "infer_target", "false", text=True) is False
    assert options.coerce(BeDKDConfig, "punish_bound", "none", text=True) is None
    assert options.coerce(BeDKDConfig, "max_candidates", "128", text=True) == 128
    assert options.coerce(RAPConfig, "prob_range", "0.1,0.3", text=True) == (0.1, 0.3)
    assert options.coerce(AttackConfig, "triggers", "cf, mn", text=True) == ("cf", "mn")
    with pytest.raises(DataError, match="BeDKD option n_poison: '3.5' is not int"):
        options.coerce(BeDKDConfig, "n_poison", "3.5", text=True, what="BeDKD")
    with pytest.raises(DataError, match="option prob_range: '0.1' is not a list of float"):
        options.coerce(RAPConfig, "prob_range", "0.1", text=True)


def test_yaml_and_python_values_are_checked_never_guessed():
    assert options.coerce(BeDKDConfig, "learning_rate", 1) == 1.0
    assert options.coerce(RAPConfig, "prob_range", [0.2, 0.4]) == (0.2, 0.4)
    with pytest.raises(DataError, match="write it with a dot"):
        options.coerce(BeDKDConfig, "learning_rate", "1e-5")
    with pytest.raises(DataError, match="is not int"):
        options.coerce(BeDKDConfig, "n_poison", True)
    with pytest.raises(DataError, match="unknown option 'taus': valid are"):
        options.coerce(BeDKDConfig, "taus", 0.1)


def test_choices_come_from_literal_annotations_and_are_enforced_on_construction():
    assert options.options_of(BeDKDConfig)["refine"].choices == ("none", "direction")
    assert set(options.options_of(BeDKDConfig)["preset"].choices) == set(PRESETS)
    with pytest.raises(DataError, match="unknown BeDKD scan 'random': use one of file_order, rank"):
        BeDKDConfig(scan="random")
    with pytest.raises(DataError, match="unknown attack label_mode 'grey': use one of dirty, clean"):
        options.coerce(AttackConfig, "label_mode", "grey", what="attack")
    with pytest.raises(DataError, match="RAP option optimizer"):
        make_defense_config("rap", scale="quick", optimizer=3)


def test_flags_are_made_from_the_fields_and_read_back_typed():
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, {"bedkd": BeDKDConfig, "rap": RAPConfig}, skip=("seed",))
    args = parser.parse_args(["--tau", "0.2", "--no-infer-target", "--no-punish-bound", "--prob-range", "0.2,0.5"])
    assert options.given(args, BeDKDConfig, skip=("seed",)) == {"tau": 0.2, "infer_target": False,
                                                                "punish_bound": None}
    assert options.given(args, RAPConfig, skip=("seed",)) == {"prob_range": (0.2, 0.5)}
    shared = next(a for a in parser._actions if a.dest == "batch_size")
    assert "(bedkd, rap)" in shared.help and "--seed" not in parser.format_help()
    assert "agreement-score threshold" in parser.format_help()


def test_the_reshaped_library_keeps_the_victim_cache_keys(monkeypatch, tmp_path):
    # The quick key was computed by the code before the library was reshaped (commit 132a524): the same victims
    # are found again, so no stored report's victim is retrained or silently replaced. The full key is the one
    # of a victim trained without the defender's clean pool (held out since e4016fa) for one epoch of
    # length-grouped batches of 16 (since 4872dd3): it differs on purpose from the earlier d7cffeffcb935f261213
    # (training rows that held the pool) and 28cce9e31d16908c134d (three shuffled epochs of 32).
    from bedkd_core import experiments, victim

    monkeypatch.setenv("BEDKD_CACHE", str(tmp_path))
    monkeypatch.delenv("BEDKD_MINILM_DIR", raising=False)
    monkeypatch.setattr(victim, "load_classifier", lambda *a, **k: (None, None))
    monkeypatch.setattr(victim, "train_classifier", lambda *a, **k: None)
    monkeypatch.setattr(victim, "save_model", lambda *a, **k: None)
    for scale, attack, key in [("quick", "badnets", "4c720ffa41afd8f1d409"), ("full", "addsent", "7228f169ea18fecba8f6")]:
        prepared = experiments.prepare(dataset="sst2", attack=AttackConfig(name=attack), scale=scale, seed=0)
        assert prepared.victim.path.name == key, (scale, attack)


def test_configs_are_frozen_and_serialise_into_reports():
    config = make_defense_config("bedkd", scale="quick", tau=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tau = 0.2
    assert config.asdict()["tau"] == 0.05 and config.asdict()["preset"] == "quick"


def test_an_option_given_as_none_sets_none_over_the_preset():
    # The fixed preset bounds the punish loss and takes 20 trust batches; a grid's `punish_bound: null`, the
    # CLI's --no-punish-bound or a benchmark's `trust_batches=None` must reach the config, not be dropped.
    fixed = make_defense_config("bedkd", scale="full")
    assert (fixed.punish_bound, fixed.trust_batches, fixed.patience) == (3.0, 20, 10)
    unbounded = make_defense_config("bedkd", scale="full", punish_bound=None, trust_batches=None, patience=None)
    assert (unbounded.punish_bound, unbounded.trust_batches, unbounded.patience) == (None, None, None)
    assert make_defense_config("bedkd", scale="full", preset=None).preset == "fixed"  # no preset named
    with pytest.raises(DataError):  # a baseline field that takes no None says so
        make_defense_config("finetune", scale="quick", epochs=None)
