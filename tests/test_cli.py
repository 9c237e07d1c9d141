"""The `bedkd` command's bad-input paths: each fails fast (before any training) with a message naming the fix."""
import json
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
                 "finetune", "fine_pruning", "nad", "strip", "rap", "onion", "cube", "bki"):
        assert word in out


def test_a_defense_short_of_clean_data_fails_before_the_victim_is_trained(monkeypatch, sst2):
    # Neither `run` nor `compare` may train (or load) a victim, or evaluate, before the defender data is checked.
    from bedkd_core import compare, experiments
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.data import DataError

    monkeypatch.setattr(experiments, "get_victim", lambda **kwargs: pytest.fail("victim trained before the data check"))
    monkeypatch.setattr(experiments, "evaluate", lambda *a, **k: pytest.fail("evaluated before the data check"))
    with pytest.raises(DataError, match="strip"):
        experiments.run_experiment(dataset="sst2", attack=AttackConfig(name="badnets"), defense="strip",
                                   defense_options={"threshold_per_class": 100_000}, scale="quick")
    with pytest.raises(DataError, match="strip"):
        compare.compare(dataset="sst2", attack=AttackConfig(name="badnets"), defenses="finetune,strip",
                        options={"strip": {"threshold_per_class": 100_000}}, scale="quick")


def _tiny_files(tmp_path, tiny_model):
    rows = "".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(["a fine film", "dull"] * 4))
    (tmp_path / "clean.jsonl").write_text(rows)
    return tiny_model(tmp_path / "victim"), tmp_path / "clean.jsonl"


def test_defend_with_a_hub_id_that_is_not_there_is_a_clear_error(tmp_path, capsys, tiny_model):
    _, clean = _tiny_files(tmp_path, tiny_model)
    assert cli.main(["defend", "--victim", "nobody/no-such-model", "--clean", str(clean), "--suspect", str(clean),
                     "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bedkd: error: could not load model 'nobody/no-such-model'" in err and "offline, use" in err


def test_defend_with_a_classifier_for_more_classes_than_the_data_is_a_clear_error(tmp_path, capsys, tiny_model):
    _, clean = _tiny_files(tmp_path, tiny_model)
    victim = tiny_model(tmp_path / "victim3", num_labels=3)
    assert cli.main(["defend", "--victim", str(victim), "--clean", str(clean), "--suspect", str(clean),
                     "--out", str(tmp_path / "out")]) == 2
    assert f"{victim} has 3 labels but {clean} has no rows of class(es) 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "defend", "compare"])
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_path_that_cannot_be_a_folder_fails_before_any_work(command, where, tmp_path, monkeypatch, capsys,
                                                                       tiny_model):
    from bedkd_core import compare, experiments
    from bedkd_core.defenses import bedkd

    work = lambda *a, **k: pytest.fail("work started before the output path was checked")  # noqa: E731
    for module, name in [(experiments, "prepare"), (compare, "prepare"), (bedkd, "bedkd")]:
        monkeypatch.setattr(module, name, work)
    victim, clean = _tiny_files(tmp_path, tiny_model)
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "out"
    argv = {"run": ["run", "--dataset", "sst2", "--attack", "badnets"],
            "compare": ["compare", "--dataset", "sst2", "--attack", "badnets", "--defenses", "strip"],
            "defend": ["defend", "--victim", str(victim), "--clean", str(clean), "--suspect", str(clean)]}[command]
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"bedkd: error: output folder {out}" in err and "name a" in err


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
