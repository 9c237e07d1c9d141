"""The `bedkd` command's bad-input paths: each fails fast (before any training) with a message naming the fix."""
import subprocess
import sys

import pytest

from bedkd_core import cli


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imdb", "--attack", "badnets"], "unknown dataset 'imdb': use one of sst2, olid, agnews"),
    (["--dataset", "sst2", "--attack", "ripples"], "unknown attack 'ripples': use one of badnets, addsent, synbkd"),
    (["--dataset", "sst2", "--attack", "badnets", "--defense", "onion2"], "unknown defense .onion2.: use one of none, bedkd"),
    (["--dataset", "sst2", "--attack", "badnets", "--target-label", "7"], "target label 7 does not exist"),
    (["--dataset", "sst2", "--attack", "badnets", "--poison-rate", "0"], r"poison rate 0.0 is outside \(0, 1\)"),
    (["--dataset", "sst2", "--attack", "badnets", "--num-insertions", "0"], "inserted at least once"),
    (["--dataset", "sst2", "--attack", "badnets", "--tau", "0.2"], "option\\(s\\) --tau do not apply to --defense none"),
    (["--dataset", "sst2", "--attack", "badnets", "--defense", "strip", "--beta", "3"],
     "option\\(s\\) --beta do not apply to --defense strip; its options are batch_size, frr"),
    (["--dataset", "sst2", "--attack", "badnets", "--defense", "bedkd", "--tau", "low"], "BeDKD option tau: 'low' is not float"),
    (["--dataset", "sst2", "--attack", "badnets", "--defense", "bedkd", "--refine", "cluster"],
     "unknown BeDKD refine 'cluster': use one of none, direction"),
    (["--dataset", "sst2", "--attack", "badnets", "--triggers", " , "], "attack option triggers: ' , ' is not a list of str"),
    (["--dataset", "sst2", "--attack", "badnets", "--defense", "bedkd", "--preset", "paper"], "unknown BeDKD preset 'paper'"),
    (["--dataset", "sst2", "--attack", "badnets", "--scale", "quick", "--model", "/nonexistent/model"], "no model weights found"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, capsys):
    assert cli.main(["run", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bedkd: error:")
    import re
    assert re.search(message, err), err


def test_help_lists_attacks_defenses_and_bedkd_options():
    out = subprocess.run([sys.executable, "-m", "bedkd_core", "run", "--help"], capture_output=True, text=True).stdout
    for word in ("badnets", "stylebkd", "bedkd", "--tau", "--n-poison", "--temperature-akd", "--preset", "--trust-pickle",
                 "finetune", "fine_pruning", "nad", "strip", "rap", "onion", "cube"):
        assert word in out


def test_a_defense_short_of_clean_data_fails_before_any_evaluation(monkeypatch, sst2):
    # No victim is trained (get_victim is stubbed) and nothing may be evaluated before the defender data is checked.
    from bedkd_core import experiments
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.data import DataError

    monkeypatch.setattr(experiments, "get_victim", lambda **kwargs: None)
    monkeypatch.setattr(experiments, "evaluate", lambda *a, **k: pytest.fail("evaluated before the data check"))
    with pytest.raises(DataError, match="strip"):
        experiments.run_experiment(dataset="sst2", attack=AttackConfig(name="badnets"), defense="strip",
                                   defense_options={"threshold_per_class": 100_000}, scale="quick")


def test_missing_data_root_says_where_it_looked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path / "nowhere"))
    assert cli.main(["run", "--dataset", "sst2", "--attack", "badnets", "--out", str(tmp_path)]) == 2
    assert "does not hold the datasets" in capsys.readouterr().err


def test_the_printed_table_shows_an_input_filters_rejection_rates(capsys):
    report = {"dataset": "sst2", "attack": {"name": "badnets"}, "scale": "quick", "seed": 0,
              "defense": {"name": "strip"}, "victim": {"cacc": 0.86, "asr": 0.99}, "clean_floor": None,
              "defended": {"cacc": 0.85, "asr": 0.12, "frr": 0.04, "far": 0.88, "cacc_all": 0.82}, "detection": None}
    cli._print_report(report)
    out = capsys.readouterr().out
    assert "defended (strip)" in out and "FRR 0.040" in out and "FAR 0.880" in out and "0.820" in out
