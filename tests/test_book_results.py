"""Chapters read results files through bedkd_core.book: finished cells, 'not yet run' cells, provenance."""
import json

import pandas as pd
import pytest

from bedkd_core import book, store


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    cell = store.cell_dir(grid="full", dataset="sst2", attack="badnets", defense="bedkd-fixed")
    cell.mkdir(parents=True)
    (cell / "report.json").write_text(json.dumps({
        "scale": "full", "victim": {"cacc": 0.87, "asr": 1.0}, "clean_floor": {"asr": 0.1},
        "defended": {"cacc": 0.88, "asr": 0.05}, "detection": {"precision": 0.9, "recall": 0.02, "n_flagged": 32},
        "seconds": {"victim": 600.0, "defense": 900.0},
        "provenance": {"git_commit": "abc123def4567890", "device": "cpu (x86_64, 2 cores)", "date": "2026-11-26T08:00:00Z"},
    }))
    return tmp_path


def test_results_frame_marks_missing_cells_not_yet_run(results):
    frame = book.results_frame("full", expected=[("sst2", "badnets", "bedkd-fixed"), ("sst2", "addsent", "bedkd-fixed")])
    done = frame[frame.status == "done"].iloc[0]
    assert (done.victim_asr, done.defended_asr, done.precision, done.floor_asr) == (1.0, 0.05, 0.9, 0.1)
    missing = frame[frame.attack == "addsent"].iloc[0]
    assert missing.status == book.NOT_RUN
    assert missing.isna()[["victim_asr", "defended_asr"]].all()  # never a number for a cell that did not run


def test_provenance_note_names_commit_device_and_date(results):
    note = book.provenance_note(book.results_frame("full"))
    assert "abc123def456" in note and "2 cores" in note and "2026-11-26" in note and "full" in note
    assert book.provenance_note(book.results_frame("nothing-here")).startswith("Not yet run")


def test_provenance_note_says_which_cells_predate_the_held_out_pool(results):
    """The fixture's full-scale report has no sizes.clean_pool_overlap: its pool overlapped the victim's rows."""
    note = book.provenance_note(book.results_frame("full"))
    assert "1 of these 1 cells were run before the defender's clean pool was held out" in note
    report = results / "full" / "sst2" / "badnets" / "bedkd-fixed" / "seed0" / "report.json"
    fresh = {**json.loads(report.read_text()), "sizes": {"clean_pool_overlap": 0}}
    report.write_text(json.dumps(fresh))
    assert "held out" not in book.provenance_note(book.results_frame("full"))


def test_check_setup_gives_one_readable_line(monkeypatch, tmp_path):
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match="does not hold the datasets"):
        book.check_setup()


def test_victims_frame_takes_default_victims_from_any_grid_and_prefers_a_floor(results):
    from bedkd_core.attacks import AttackConfig

    def write(grid, defense, attack_config, floor):
        cell = store.cell_dir(grid=grid, dataset="sst2", attack="badnets", defense=defense)
        cell.mkdir(parents=True)
        report = json.loads((store.cell_dir(grid="full", dataset="sst2", attack="badnets", defense="bedkd-fixed")
                             / "report.json").read_text())
        report.update(dataset="sst2", seed=0, attack=attack_config.resolved("sst2").asdict(), clean_floor=floor,
                      victim={"cacc": 0.5, "asr": 0.5} if floor is None else {"cacc": 0.86, "asr": 0.99})
        (cell / "report.json").write_text(json.dumps(report))

    write("ablation-akd", "bedkd", AttackConfig(name="badnets"), None)
    write("paper", "none", AttackConfig(name="badnets"), {"asr": 0.04})
    write("ablation-poison", "none", AttackConfig(name="badnets", poison_rate=0.01), {"asr": 0.02})  # not default
    frame = book.victims_frame(scale="full", datasets=["sst2", "olid"], attacks=["badnets"])
    sst2 = frame[frame.dataset == "sst2"].iloc[0]
    assert (sst2.status, sst2.victim_asr, sst2.floor_asr, sst2.grid) == ("done", 0.99, 0.04, "paper")
    assert frame[frame.dataset == "olid"].iloc[0].status == book.NOT_RUN


def test_headline_averages_finished_full_cells_and_quotes_only_the_abstract(results):
    cells = book.finished_cells(("full",))
    table = book.headline(cells)
    assert table.loc["bedkd-fixed", "mean_asr_reduction"] == pytest.approx(0.95)
    assert table.loc["bedkd-fixed", "mean_cacc_drop"] == pytest.approx(-0.01)
    text = book.headline_markdown(("full",))
    assert "| bedkd-fixed | 1 | 95.0% | -1.0 pts | 1 of 1 | 0.90 | 0.020 | 900 (CPU 2 cores) | sst2 | badnets |" in text
    assert "abc123def456" in text and book.ABSTRACT_CLAIM in text
    assert book.headline_markdown(("nothing-here",)).startswith("No full-scale cell has finished yet")


def test_a_provenance_correction_replaces_the_recorded_commit_without_touching_the_report(results):
    (results / store.CORRECTIONS).write_text(json.dumps({"corrections": [
        {"recorded_commit": "abc123def4567890", "device": "cpu (x86_64, 2 cores)", "source_commit": "fedcba9876543210",
         "why": "stale .git on the copied tree"},
        {"recorded_commit": "abc123def4567890", "device": "NVIDIA H200", "source_commit": "0000", "why": "other device"}]}))
    report = store.load_reports("full")[0]
    assert report["provenance"]["git_commit"] == "fedcba9876543210"
    assert report["provenance"]["recorded_commit"] == "abc123def4567890"
    assert "fedcba987654" in book.provenance_note(book.results_frame("full"))
    stored = json.loads(next(results.glob("full/*/*/*/seed0/report.json")).read_text())
    assert stored["provenance"]["git_commit"] == "abc123def4567890"


def test_a_correction_naming_a_grid_corrects_only_that_grid(results):
    (results / store.CORRECTIONS).write_text(json.dumps({"corrections": [
        {"recorded_commit": "abc123def4567890", "device": "cpu (x86_64, 2 cores)", "source_commit": "1111",
         "grid": "other", "why": "a sweep of grid other ran older code"}]}))
    assert store.load_reports("full")[0]["provenance"]["git_commit"] == "abc123def4567890"
    fixes = json.loads((results / store.CORRECTIONS).read_text())
    fixes["corrections"][0]["grid"] = "full"
    (results / store.CORRECTIONS).write_text(json.dumps(fixes))
    assert store.load_reports("full")[0]["provenance"]["git_commit"] == "1111"


def test_provenance_names_the_code_loaded_not_the_checkout_head_now(monkeypatch):
    """A sweep that runs for hours while the checkout moves on records the commit it imported."""
    loaded = store.provenance()["git_commit"]
    monkeypatch.setattr(store.subprocess, "run", lambda *a, **k: pytest.fail("provenance re-read git"))
    assert store.provenance()["git_commit"] == loaded


def test_every_stored_provenance_correction_matches_a_stored_report():
    corrections = store.provenance_corrections()
    grids = [p.name for p in store.RESULTS_DIR.iterdir() if p.is_dir()]
    corrected = [r["provenance"].get("recorded_commit") for g in grids for r in store.load_reports(g)
                 if "provenance" in r]
    assert all(fix["recorded_commit"] in corrected for fix in corrections)


def test_headline_seconds_are_never_averaged_across_devices():
    cells = pd.DataFrame({"defense": ["bedkd-fixed"] * 3, "defense_seconds": [4000.0, 4400.0, 40.0],
                          "device": ["cpu (x86_64, 2 cores, 1 threads)", "cpu (x86_64, 2 cores, 2 threads)",
                                     "NVIDIA H200"]})
    assert book.seconds_by_device(cells) == "4200 (CPU 2 cores); 40 (NVIDIA H200)"


def test_the_floor_test_takes_a_floor_measured_in_another_grid_and_counts_a_miss(results):
    from bedkd_core.attacks import AttackConfig

    def write(grid, attack, defense, defended_asr, floor):
        cell = store.cell_dir(grid=grid, dataset="sst2", attack=attack, defense=defense)
        cell.mkdir(parents=True)
        (cell / "report.json").write_text(json.dumps({
            "dataset": "sst2", "seed": 0, "scale": "full", "attack": AttackConfig(name=attack).resolved("sst2").asdict(),
            "victim": {"cacc": 0.87, "asr": 1.0}, "clean_floor": floor,
            "defended": None if defended_asr is None else {"cacc": 0.87, "asr": defended_asr},
            "seconds": {"victim": 1.0, "defense": 1.0},
            "provenance": {"git_commit": "x", "device": "cpu", "date": "2026-11-26T19:00:00Z"}}))

    write("full", "addsent", "bedkd-fixed", 0.30, None)  # its own report has no floor...
    write("paper", "addsent", "none", None, {"asr": 0.20})  # ...the paper grid measured it: 0.30 > 0.20 + 0.05
    cells = book.finished_cells(("paper", "full")).set_index("attack")
    assert cells.loc["addsent", "floor_asr"] == 0.20 and cells.loc["addsent", "within_floor"] == 0.0
    assert cells.loc["badnets", "within_floor"] == 1.0  # the fixture: 0.05 <= 0.1 + 0.05
    assert "| 1 of 2 |" in book.headline_markdown(("paper", "full"))


def test_headline_lists_the_benchmarks_with_their_provenance(results):
    assert book.benchmarks_markdown() == ""  # none run: no line, never a made-up number
    (results / "benchmarks").mkdir()
    prov = {"git_commit": "feedbeef00001111", "device": "cpu (x86_64, 2 cores, 2 threads)", "date": "2026-11-26T15:00:00Z"}
    (results / "benchmarks" / "book.json").write_text(json.dumps(
        {"cold_seconds": 900.0, "warm_seconds": 450.0, "budget_seconds": 600.0, "provenance": prov}))
    (results / "benchmarks" / "bedkd.json").write_text(json.dumps(
        {"scale": "quick", "akd_epochs": 5, "speedup": 3.5, "identical_metrics": True, "provenance": prov,
         "results": {"reference schedule": {"seconds": 350.0}, "as implemented": {"seconds": 100.0}}}))
    runs = {name: {"config": {"epochs": epochs, "batch_size": size, "batching": batching}, "seconds": seconds,
                   "cacc": 0.8, "asr": 1.0}
            for name, epochs, size, batching, seconds in (("quick now", 1, 16, "by_length", 50.0),
                                                           ("quick before", 2, 32, "shuffle", 175.0))}
    (results / "benchmarks" / "quick-victim.json").write_text(json.dumps(
        {"dataset": "sst2", "attack": "badnets", "train_rows": 2000, "runs": runs, "provenance": prov}))
    side = {"seconds": {"cell": 800.0}, "defended": {"cacc": 0.886, "asr": 0.0}}
    before = {"seconds": {"cell": 1600.0}, "defended": {"cacc": 0.906, "asr": 0.0}}
    (results / "benchmarks" / "full-cpu.json").write_text(json.dumps(
        {"dataset": "sst2", "attack": "addsent", "speedup": 2.0, "clean_floor": {"asr": 0.1}, "provenance": prov,
         "sides": {"now": side, "before": before}}))
    text = book.headline_markdown(("full",))
    assert "(`benchmarks/bench_full_cpu.py`, sst2 addsent, victim + bedkd-fixed): 800 s vs 1600 s with the " \
           "settings before, 2.00x faster (target 3x); defended CACC 0.886 vs 0.906 (-2.0 points, LOWER now), " \
           "ASR 0.000 vs 0.000 (floor 0.100); commit feedbeef0000" in text
    assert "2000 rows): 50 s (1 epoch(s) of by_length batches of 16: CACC 0.800, ASR 1.000) vs 175 s (2 epoch(s) " \
           "of shuffle batches of 32: CACC 0.800, ASR 1.000) before, 3.50x faster; commit feedbeef0000" in text
    assert "450 s with the victims cached (0.75 x the 10-min budget), 900 s from an empty cache (1.50 x)" in text
    assert "5 epochs, reference evaluation length-sorted (an earlier version of the benchmark)): 350 s vs 100 s, " \
           "3.50x faster, final metrics identical; commit feedbeef0000" in text


def test_readme_headline_matches_results():
    from pathlib import Path

    readme = Path(book.__file__).resolve().parents[1] / "README.md"
    start, end = book.README_MARKERS
    block = readme.read_text().split(start, 1)[1].split(end, 1)[0]
    assert block == "\n" + book.headline_markdown(), "README is stale: run `bedkd headline --readme README.md`"
