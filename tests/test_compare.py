"""The comparison harness: argument checks fail before any work (fast); one real quick run (slow)."""
import dataclasses
import json
from types import SimpleNamespace

import pytest
from datasets import Dataset

from bedkd_core import cli, compare
from bedkd_core.defenses.base import DefenderData
from bedkd_core.attacks import AttackConfig
from bedkd_core.data import DataError


def _no_prepare(**kwargs):
    raise AssertionError("prepare() must not run when the arguments are wrong")


def test_unknown_defense_is_refused_before_any_work_and_lists_the_valid_ones(monkeypatch):
    monkeypatch.setattr(compare, "prepare", _no_prepare)
    with pytest.raises(DataError, match="unknown defense\\(s\\) 'fine_mixing': valid are none, bedkd, finetune"):
        compare.compare(dataset="sst2", attack=AttackConfig(name="badnets"), defenses="strip,fine_mixing")
    assert compare.parse_defenses("strip, rap,strip") == ["strip", "rap"]


def test_settings_are_typed_and_checked(monkeypatch):
    assert compare.parse_settings(["strip.repeat=7", "rap.prob_range=0.2,0.4", "cube.retrain=false"],
                                  ["strip", "rap", "cube"]) == {
        "strip": {"repeat": 7}, "rap": {"prob_range": (0.2, 0.4)}, "cube": {"retrain": False}}
    with pytest.raises(DataError, match="strip has no option 'beta'"):
        compare.parse_settings(["strip.beta=1"], ["strip"])
    with pytest.raises(DataError, match="'nad' is not among --defenses"):
        compare.parse_settings(["nad.beta=1"], ["strip"])
    with pytest.raises(DataError, match="use DEFENSE.FIELD=VALUE"):
        compare.parse_settings(["repeat=3"], ["strip"])


def test_cli_exits_2_naming_the_problem(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compare, "prepare", _no_prepare)
    assert cli.main(["compare", "--dataset", "sst2", "--attack", "badnets", "--defenses", "onion,bogus",
                     "--out", str(tmp_path)]) == 2
    assert "unknown defense(s) 'bogus'" in capsys.readouterr().err
    assert cli.main(["compare", "--dataset", "sst2", "--attack", "badnets", "--defenses", "strip",
                     "--set", "strip.repeat=many", "--out", str(tmp_path)]) == 2
    assert "--set 'strip.repeat=many': STRIP option repeat: 'many' is not int" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["compare", "--dataset", "sst2", "--attack", "badnets", "--defenses",
                                          "strip", "--out", "x", "--set", "strip.repeat=2"])
    assert args.set == ["strip.repeat=2"] and args.scale is None


def test_a_defense_short_of_data_is_named_before_any_defense_runs(monkeypatch):
    tiny = Dataset.from_dict({"text": [f"t{i}" for i in range(300)], "label": [i % 2 for i in range(300)]})
    stub = SimpleNamespace(defender_data=lambda: DefenderData(clean=tiny, suspect=tiny, num_classes=2))
    monkeypatch.setattr(compare, "prepare", lambda **kw: kw["check"](stub.defender_data()))  # before the victim
    called = []
    run = lambda **kw: called.append(1)  # noqa: E731
    monkeypatch.setitem(compare.DEFENSES, "finetune", dataclasses.replace(compare.DEFENSES["finetune"], run=run))
    with pytest.raises(DataError, match="defense 'strip' needs 128 held-out clean rows per class.*plus 64 per class.*150, 150"):
        compare.compare(dataset="sst2", attack=AttackConfig(name="badnets"), defenses="finetune,strip", scale="quick")
    assert not called


def test_tables_render_every_column_and_mark_missing_values():
    rows = [dict.fromkeys(compare.COLUMNS) for _ in range(2)]
    rows[0].update(defense="none", kind="victim", status="done", cacc=0.86, asr=0.99, defense_s=0.0)
    rows[1].update(defense="onion", kind="input sanitiser", status="not run: needs a causal LM | x")
    table = {"dataset": "sst2", "attack": {"name": "badnets"}, "scale": "quick", "seed": 0, "columns": compare.COLUMNS,
             "rows": rows, "clean_floor": {"cacc": 0.87, "asr": 0.04}, "seconds_total": 12.0,
             "provenance": {"device": "cpu", "git_commit": "abc"},
             "details": {"onion": {"summary": {"lm": "SmolLM2-135M"}}}}
    md = compare.to_markdown(table)
    assert "| none | victim | done | 0.860 | 0.990 | — |" in md and "not run: needs a causal LM / x" in md
    assert "Clean-model floor" in md and "ONION's causal LM: SmolLM2-135M." in md
    csv_text = compare.to_csv(table)
    assert csv_text.splitlines()[0] == ",".join(compare.COLUMNS) and len(csv_text.splitlines()) == 3


@pytest.mark.slow
def test_quick_compare_on_the_cached_victim_writes_one_table(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--dataset", "sst2", "--attack", "badnets", "--defenses", "finetune,strip,onion",
                         "--scale", "quick", "--out", str(out), "--no-floor",
                         "--set", "finetune.clean_per_class=16", "--set", "finetune.epochs=1",
                         "--set", "strip.repeat=2", "--set", "onion.lm=/nonexistent/causal-lm"])
    assert code == 0
    table = json.loads((out / "compare.json").read_text())
    rows = {r["defense"]: r for r in table["rows"]}
    assert list(rows) == ["none", "finetune", "strip", "onion"]
    assert rows["none"]["asr"] >= 0.9 and rows["none"]["frr"] is None
    assert rows["finetune"]["clean_rows"] == 32 and rows["finetune"]["frr"] is None
    strip = rows["strip"]
    assert strip["status"] == "done" and strip["frr"] <= 0.05 and 0.0 <= strip["far"] <= 1.0
    assert strip["asr"] <= rows["none"]["asr"] and strip["eval_clean"] == table["sizes"]["clean_test"]
    assert rows["onion"]["status"].startswith("not run: onion not run: needs a causal LM")
    assert rows["onion"]["cacc"] is None
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("defense,kind,status,cacc,asr,frr,far")
    assert "| strip |" in (out / "compare.md").read_text()
    assert table["defenses"]["strip"]["repeat"] == 2 and table["victim_from_cache"]
