"""End to end on real SST-2 with the real MiniLM weights, at quick scale (victims are cached per session)."""
import dataclasses
import json

import pytest

from bedkd_core import cli, defenses, experiments
from bedkd_core.attacks import AttackConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def badnets_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("badnets-none")
    assert cli.main(["run", "--dataset", "sst2", "--attack", "badnets", "--defense", "none", "--scale", "quick",
                     "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def test_quick_badnets_victim_is_accurate_and_backdoored(badnets_report):
    report = badnets_report
    assert report["victim"]["cacc"] >= 0.78 and report["victim"]["asr"] >= 0.90
    assert report["clean_floor"]["asr"] < 0.5  # a clean model rarely follows the trigger
    assert report["defended"] is None and report["detection"] is None
    assert report["attack"] == {**AttackConfig(name="badnets").resolved("sst2").asdict()}
    assert set(report) >= {"dataset", "attack", "defense", "model", "scale", "seed", "victim", "clean_floor",
                           "defended", "detection", "seconds", "provenance"}
    assert set(report["provenance"]) >= {"git_commit", "device", "versions"}


@pytest.mark.parametrize("attack", ["badnets", "addsent"])
def test_quick_bedkd_halves_asr_keeps_cacc_and_detects(attack, tmp_path, monkeypatch):
    seen = {}
    original = defenses.DEFENSES["bedkd"]

    def spy(*, victim, data, config):
        seen["suspect_columns"] = data.suspect.column_names
        seen["clean_columns"] = data.clean.column_names
        return original(victim=victim, data=data, config=config)

    monkeypatch.setitem(defenses.DEFENSES, "bedkd", dataclasses.replace(original, run=spy))
    report = experiments.run_experiment(dataset="sst2", attack=AttackConfig(name=attack), defense="bedkd",
                                        scale="quick", out=tmp_path, with_floor=False)
    assert seen == {"suspect_columns": ["text", "label"], "clean_columns": ["text", "label"]}  # no oracle flags
    victim, defended = report["victim"], report["defended"]
    assert defended["asr"] <= victim["asr"] / 2, report
    assert defended["cacc"] >= victim["cacc"] - 0.05, report
    # Ranking candidates by lowest score gave AddSent 0.53 here (clean rows the victim is unsure of score lowest);
    # the DMM-direction ranking of the fixed/quick presets measured 1.00 on both attacks (CPU, seed 0).
    assert report["detection"]["precision"] >= 0.8, report
    assert report["detection"]["watched_precision"] >= 0.8, report  # the held-out identified rows
    assert report["defense_details"]["n_watched"] == 16 and 1 <= report["defense_details"]["selected_epoch"] <= 12
    assert report["defense"]["preset"] == "quick"
    assert (tmp_path / "purified_model" / "model.safetensors").is_file()
    scores = json.loads((tmp_path / "scores.json").read_text())["scores"]
    assert len(scores["row"]) == len(scores["score"]) == len(scores["is_poisoned"]) == report["sizes"]["victim_train"]


def test_oracle_ablation_gets_rows_from_run_experiment_never_flags(badnets_report, tmp_path, monkeypatch):
    seen = {}
    original = defenses.DEFENSES["bedkd"]

    def spy(*, victim, data, config, oracle_rows):
        seen["suspect_columns"], seen["n_oracle_rows"] = data.suspect.column_names, len(oracle_rows)
        return original(victim=victim, data=data, config=config, oracle_rows=oracle_rows)

    monkeypatch.setitem(defenses.DEFENSES, "bedkd", dataclasses.replace(original, run=spy))
    report = experiments.run_experiment(dataset="sst2", attack=AttackConfig(name="badnets"), defense="bedkd",
                                        defense_options={"identify": "oracle", "akd_epochs": 1}, scale="quick",
                                        out=tmp_path, with_floor=False)
    assert seen == {"suspect_columns": ["text", "label"], "n_oracle_rows": report["sizes"]["poisoned_rows"]}
    assert report["detection"]["precision"] == 1.0 and report["detection"]["watched_precision"] == 1.0
    assert report["defense"]["identify"] == "oracle" and "dmm_from_cache" not in report["defense_details"]


def test_defend_a_model_you_bring(badnets_report, tmp_path):
    from bedkd_core.cache import cache_dir

    victims = sorted((cache_dir() / "victims").iterdir(), key=lambda p: p.stat().st_mtime)
    victim_dir = next(v for v in victims if json.loads((v / "bedkd.json").read_text())["describe"]["attack"]["name"] == "badnets")
    clean, suspect = tmp_path / "clean.jsonl", tmp_path / "suspect.jsonl"
    from bedkd_core.data import load_task

    train = load_task("sst2").train
    clean.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in train.select(range(6000, 6920))))
    suspect.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in train.select(range(300))))
    assert cli.main(["defend", "--victim", str(victim_dir), "--clean", str(clean), "--suspect", str(suspect),
                     "--out", str(tmp_path / "out"), "--preset", "quick", "--akd-epochs", "1", "--dmm-epochs", "1",
                     "--dmm-per-class", "16", "--clean-per-class", "16"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["defense"]["akd_epochs"] == 1 and (tmp_path / "out" / "purified_model" / "model.safetensors").is_file()
