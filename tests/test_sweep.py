"""Sweeps over grid files: validation, resumable execution (even after SIGKILL), status, the Ray backend.

Every test but the two marked slow injects a fake cell runner, so no model is trained.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bedkd_core import cli, store, sweep
from bedkd_core.sweep import GridError, expected_settings, load_grid, run_sweep, sweep_status

REPO_ROOT = Path(__file__).resolve().parent.parent

SMALL_GRID = """\
scale: quick
seeds: [0]
datasets: [sst2]
attacks:
  - badnets
  - {label: addsent, name: addsent}
defenses:
  - none
  - {label: bedkd-tau0.05, name: bedkd, options: {tau: 0.05}}
"""


def write_grid(tmp_path, text=SMALL_GRID, name="small"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def fake_report(cell, scale, model=None):
    """A report with the schema fields the sweep compares, and made-up metrics."""
    settings = expected_settings(cell, scale=scale, model=model)
    return {"dataset": cell.dataset_name, "attack": settings["attack"], "defense": settings["defense"],
            "scale": scale, "seed": cell.seed, "victim_config": {"model": settings["model"]},
            "victim": {"cacc": 0.9, "asr": 0.95}, "clean_floor": None,
            "defended": None if cell.defense_name == "none" else {"cacc": 0.88, "asr": 0.1},
            "detection": None, "seconds": {"total": 0.0}, "provenance": {"date": "2026-01-01T00:00:00Z"}}


class FakeRunner:
    """Records the cells it runs; writes an artifact first, as run_experiment does; fails where told."""

    def __init__(self, fail=()):
        self.ran, self.fail = [], set(fail)

    def __call__(self, cell, *, out, scale, model):
        self.ran.append(cell.id)
        (out / "scores.json").write_text(json.dumps({"scores": []}))
        if cell.id in self.fail:
            raise RuntimeError(f"boom in {cell.id}")
        return fake_report(cell, scale, model)


def leftovers(root: Path) -> list[str]:
    """Staging folders, temporary files and lock files anywhere under root."""
    return [str(p) for p in root.rglob("*")
            if p.name.startswith(sweep.STAGING_PREFIX) or p.name.endswith(".tmp") or p.name == sweep.LOCK]


def cli_main(argv):
    return cli.main(["sweep", *argv])


# ---------------------------------------------------------------- the grid files of the repository

@pytest.mark.parametrize("name", ["paper", "full", "ablation-poison", "ablation-dmm", "ablation-akd"])
def test_repository_grids_validate_against_the_live_registries(name):
    grid = load_grid(name)
    assert grid.name == name and grid.cells
    assert all(sweep.LABEL_RE.match(part) for c in grid.cells for part in (c.dataset, c.attack, c.defense))
    for cell in grid.cells:
        if cell.unsupported:
            assert "requires" in cell.unsupported


def test_full_grid_holds_the_cells_the_chapters_expect():
    grid = load_grid("full")
    required = sweep.expected_cells(grid)
    assert sorted(required) == sorted((("sst2", a, d) for a in ("badnets", "addsent")
                                       for d in ("bedkd-fixed", "bedkd-faithful")))
    assert {c.dataset for c in grid.cells if c.optional} == {"olid", "agnews"}
    fixed = next(c for c in grid.cells if c.defense == "bedkd-fixed")
    # the settings of the background `bedkd run --preset fixed --curve-every 5 --scale full` runs
    assert expected_settings(fixed, scale="full", model=None)["defense"]["curve_every"] == 5


def test_paper_grid_reports_baselines_as_unsupported_not_missing():
    grid = load_grid("paper")
    attacks = ("badnets", "addsent", "synbkd", "stylebkd", "sos", "llmrewrite")
    assert {(c.dataset, c.attack) for c in grid.cells} == {(d, a) for d in ("sst2", "olid", "agnews") for a in attacks}
    from bedkd_core.defenses import DEFENSES

    unsupported = {c.defense for c in grid.cells if c.unsupported}
    baselines = {c.defense: c.defense_name for c in grid.cells}.items()
    # a baseline is unsupported exactly while the live registry lacks it (they are being added one by one)
    assert unsupported == {label for label, name in baselines if name not in DEFENSES}
    assert not {"none", "bedkd-fixed", "bedkd-faithful", "cube", "bki"} & unsupported


def test_ablation_grids_carry_their_options():
    poison = {c.attack: c for c in load_grid("ablation-poison").cells}
    assert poison["badnets-r0.01"].attack_config().poison_rate == 0.01
    assert poison["badnets-n3"].attack_config().num_insertions == 3
    assert {c.defense for c in poison.values()} == {"none"}
    dmm = {c.defense: c for c in load_grid("ablation-dmm").cells}
    assert dmm["bedkd-tau0.05"].defense_options == {"tau": 0.05} and not dmm["bedkd-tau0.05"].unsupported
    assert not dmm["bedkd-identify-oracle"].unsupported and not dmm["bedkd-identify-random"].unsupported
    assert expected_settings(dmm["bedkd-scan-file_order"], scale="full", model=None)["defense"]["scan"] == "file_order"
    akd = {c.defense: c for c in load_grid("ablation-akd").cells}
    assert expected_settings(akd["bedkd-trust-only"], scale="full", model=None)["defense"]["n_poison"] == 0


# ---------------------------------------------------------------- validation errors

@pytest.mark.parametrize("text, expected", [
    (SMALL_GRID.replace("  - badnets\n", "  - badnet\n"),
     [r"attacks\[0\] \('badnet'\)", "unknown attack 'badnet'", "badnets, addsent, synbkd"]),
    (SMALL_GRID.replace("name: bedkd,", "name: bedkdd,"),
     [r"defenses\[1\] \('bedkd-tau0.05'\)", "unknown defense 'bedkdd'", "valid are none, bedkd"]),
    (SMALL_GRID.replace("datasets: [sst2]", "datasets: [sst3]"),
     [r"datasets\[0\] \('sst3'\)", "unknown dataset 'sst3'", "sst2, olid, agnews"]),
    (SMALL_GRID.replace("{tau: 0.05}", "{tua: 0.05}"),
     [r"defenses\[1\] \('bedkd-tau0.05'\)", "unknown BeDKD option\\(s\\) tua", "valid are", "tau"]),
    (SMALL_GRID.replace("{tau: 0.05}", "{learning_rate: 1e-5}"),
     ["BeDKD option learning_rate: '1e-5' is not float", "write it with a dot"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: a, name: addsent, options: {label_mode: grey}}"),
     ["unknown attack label_mode 'grey': use one of dirty, clean"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: addsent, name: addsent, options: {rate: 0.1}}"),
     [r"attacks\[1\] \('addsent'\)", "unknown attack option 'rate'", "poison_rate"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: addsent, name: addsent, options: {seed: 3}}"),
     ["option 'seed' cannot be set here"]),
    (SMALL_GRID.replace("  - none\n", "  - {label: none, name: none, options: {tau: 0.1}}\n"),
     [r"defenses\[0\] \('none'\)", "takes no options"]),
    (SMALL_GRID.replace("  - none\n", "  - {label: none, name: none, option: {tau: 0.1}}\n"),
     ["unknown key\\(s\\) option", "valid keys are label, name, options"]),
    (SMALL_GRID + "sedes: [1]\n", ["unknown key\\(s\\) sedes", "valid keys are name"]),
    (SMALL_GRID.replace("  - none\n", "  - none\n  - none\n"), [r"defenses\[1\] \('none'\): label 'none' repeats"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: add/sent, name: addsent}"),
     ["label 'add/sent' is not a usable folder name"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: a, name: addsent, options: {target_label: 5}}"),
     ["cell sst2/a/none/seed0: target_label 5 does not exist in sst2"]),
    (SMALL_GRID.replace("seeds: [0]", "seeds: 0"), ["seeds: 0: give a list"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: a, name: addsent, options: {trigger_sentence: ''}}"),
     [r"attacks\[1\] \('a'\)", "attack option trigger_sentence is empty"]),
    (SMALL_GRID.replace("{label: addsent, name: addsent}", "{label: f, name: file, options: {poison_dir: p, poison_rate: 0.1}}"),
     [r"attacks\[1\] \('f'\)", r"--poison-rate [\d.]+ has no meaning for --attack file"]),
])
def test_invalid_grid_names_file_entry_and_valid_choices(tmp_path, text, expected):
    import re

    path = write_grid(tmp_path, text)
    with pytest.raises(GridError) as info:
        load_grid(path)
    message = str(info.value)
    assert str(path) in message
    for pattern in expected:
        assert re.search(pattern, message), message


def test_every_problem_is_listed_at_once(tmp_path):
    path = write_grid(tmp_path, SMALL_GRID.replace("  - badnets\n", "  - badnet\n").replace("[sst2]", "[sst3]"))
    with pytest.raises(GridError, match=r"2 problem\(s\)") as info:
        load_grid(path)
    assert "badnet'" in str(info.value) and "sst3" in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_grid(tmp_path, "datasets: [sst2]\nattacks:\n  - badnets\n defenses: [none]\n")
    with pytest.raises(GridError, match=rf"{path}:4:\d+: malformed YAML"):
        load_grid(path)


def test_unknown_grid_name_lists_the_grids():
    with pytest.raises(GridError, match="no grid named 'nope'.*ablation-akd.*full.*paper"):
        load_grid("nope")


def test_requires_turns_an_invalid_entry_into_reported_unsupported_cells(tmp_path, capsys):
    text = SMALL_GRID + "  - {label: dup, name: dup, requires: a DUP defense in DEFENSES}\n" \
                        "  - {label: bedkd-nohid, name: bedkd, options: {no_such_weight: 0.0}, requires: no_such_weight}\n"
    grid = load_grid(write_grid(tmp_path, text))
    unsupported = {c.defense: c.unsupported for c in grid.cells if c.unsupported}
    assert set(unsupported) == {"dup", "bedkd-nohid"}
    assert "defense 'dup' requires a DUP defense in DEFENSES: unknown defense 'dup'" in unsupported["dup"]
    assert "unknown BeDKD option(s) no_such_weight" in unsupported["bedkd-nohid"]
    runner = FakeRunner()
    result = run_sweep(grid, tmp_path / "out", runner=runner, progress=False)
    assert len(runner.ran) == 4 and not any("dup" in c or "nohid" in c for c in runner.ran)
    out = capsys.readouterr().out
    assert "unsupported, not run (2 cell(s), e.g. sst2/badnets/dup/seed0)" in out
    assert "4 unsupported (not run)" in result.summary()


# ---------------------------------------------------------------- running and resuming

def test_sweep_runs_every_cell_then_resumes_without_rerunning(tmp_path):
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    runner = FakeRunner()
    result = run_sweep(grid_file, out, runner=runner, progress=False)
    assert runner.ran == ["sst2/badnets/none/seed0", "sst2/badnets/bedkd-tau0.05/seed0",
                          "sst2/addsent/none/seed0", "sst2/addsent/bedkd-tau0.05/seed0"]
    assert [o["state"] for o in result.outcomes] == ["done"] * 4 and not result.failed
    report = json.loads((out / "small/sst2/badnets/bedkd-tau0.05/seed0/report.json").read_text())
    assert report["defense"]["tau"] == 0.05
    assert report["sweep"]["grid"] == "small" and report["sweep"]["cell"] == "sst2/badnets/bedkd-tau0.05/seed0"
    assert len(report["sweep"]["grid_sha256"]) == 64 and report["sweep"]["defense_options"] == {"tau": 0.05}
    assert (out / "small/sst2/badnets/bedkd-tau0.05/seed0/scores.json").exists()
    assert not leftovers(out)
    again = FakeRunner()
    assert not run_sweep(grid_file, out, runner=again, progress=False).outcomes and again.ran == []


def test_failed_cell_is_recorded_shown_and_retried(tmp_path, capsys):
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    broken = "sst2/addsent/none/seed0"
    result = run_sweep(grid_file, out, runner=FakeRunner(fail=[broken]), progress=False)
    assert [o["cell"] for o in result.failed] == [broken]
    error = json.loads((out / "small" / broken / "error.json").read_text())
    assert error["message"] == f"boom in {broken}" and "Traceback" in error["traceback"]
    cell_dir = out / "small" / broken
    assert sorted(p.name for p in cell_dir.iterdir()) == ["error.json"]  # the failed run's artifacts are gone
    capsys.readouterr()
    assert cli_main(["--grid", str(grid_file), "--out", str(out), "--status"]) == 0
    status = capsys.readouterr().out
    assert "failed" in status and f"RuntimeError: boom in {broken}" in status
    assert "4 cells: 3 done, 1 failed" in status
    retry = FakeRunner()
    run_sweep(grid_file, out, runner=retry, progress=False)
    assert retry.ran == [broken]
    assert not (cell_dir / "error.json").exists() and (cell_dir / "report.json").exists()


def test_a_defense_that_cannot_run_here_is_shown_as_not_runnable(tmp_path):
    class NotRunnable(Exception):  # the name is what counts, as for bedkd_core.defenses.NotRunnable
        pass

    def runner(cell, *, out, scale, model):
        if cell.defense == "none":
            raise NotRunnable("needs a causal LM")
        return fake_report(cell, scale, model)

    grid = load_grid(write_grid(tmp_path))
    result = run_sweep(grid, tmp_path / "out", runner=runner, progress=False)
    assert len(result.failed) == 2
    states = {s.cell.id: (s.state, s.detail) for s in sweep_status(grid, tmp_path / "out")}
    assert states["sst2/badnets/none/seed0"][0] == "not runnable"
    assert states["sst2/badnets/none/seed0"][1].startswith("NotRunnable: needs a causal LM")


def test_status_table_before_and_after(tmp_path, capsys):
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    assert cli_main(["--grid", str(grid_file), "--out", str(out), "--status"]) == 0
    before = capsys.readouterr().out
    assert before.count("not yet run") == 5 and "4 cells: 4 not yet run" in before
    assert "dataset  attack   defense        seed  status" in before
    run_sweep(grid_file, out, runner=FakeRunner(), progress=False, only=["badnets"])
    capsys.readouterr()
    cli_main(["--grid", str(grid_file), "--out", str(out), "--status"])
    after = capsys.readouterr().out
    assert "4 cells: 2 done, 2 not yet run" in after
    assert "victim CACC 0.900 ASR 0.950 → defended CACC 0.880 ASR 0.100" in after


def test_artifacts_without_report_are_not_a_finished_cell(tmp_path):
    """What a killed `bedkd run` leaves (model and scores written, report.json not yet) is run again."""
    grid = load_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    cell = grid.cells[1]
    (cell.dir(out) / "purified_model").mkdir(parents=True)
    (cell.dir(out) / "purified_model" / "stale.safetensors").write_text("old")
    (cell.dir(out) / "curve.json").write_text("{}")
    states = {s.cell.id: s.state for s in sweep_status(grid, out)}
    assert states[cell.id] == "interrupted"
    runner = FakeRunner()
    run_sweep(grid, out, runner=runner, progress=False)
    assert cell.id in runner.ran
    assert sorted(p.name for p in cell.dir(out).iterdir()) == ["report.json", "scores.json"]


def test_report_with_other_settings_is_flagged_and_kept(tmp_path, capsys):
    grid = load_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    cell = grid.cells[1]
    cell.dir(out).mkdir(parents=True)
    report = fake_report(cell, "full")  # made at full scale; the grid runs quick
    report["defense"]["tau"] = 0.1
    (cell.dir(out) / "report.json").write_text(json.dumps(report))
    status = {s.cell.id: s for s in sweep_status(grid, out)}[cell.id]
    assert status.state == "mismatch"
    assert "scale 'full' ≠ 'quick'" in status.detail and "defense.tau 0.1 ≠ 0.05" in status.detail
    runner = FakeRunner()
    run_sweep(grid, out, runner=runner, progress=False)
    assert cell.id not in runner.ran and json.loads((cell.dir(out) / "report.json").read_text()) == report
    assert f"mismatch, not run: {cell.id}" in capsys.readouterr().out


def test_rerun_mismatched_replaces_only_the_mismatched_reports(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    stale, fine = grid.cells[1], grid.cells[2]
    for cell in (stale, fine):
        cell.dir(out).mkdir(parents=True)
    report = fake_report(stale, "quick")
    report["defense"]["tau"] = 0.1
    (stale.dir(out) / "report.json").write_text(json.dumps(report))
    (fine.dir(out) / "report.json").write_text(json.dumps(fake_report(fine, "quick")))
    runner = FakeRunner()
    result = run_sweep(grid, out, runner=runner, progress=False, rerun_mismatched=True)
    assert stale.id in runner.ran and fine.id not in runner.ran
    assert json.loads((stale.dir(out) / "report.json").read_text())["defense"]["tau"] == 0.05
    assert "already done" in result.summary() and not leftovers(out)


def test_a_full_scale_report_made_before_the_pool_was_held_out_is_flagged(tmp_path):
    """Full-scale victims once trained on the defender's clean pool; such reports never pass for new ones."""
    grid = load_grid(write_grid(tmp_path))
    cell = grid.cells[0]
    expected = expected_settings(cell, scale="full", model=None)
    old = fake_report(cell, "full")
    old["sizes"] = {"victim_train": 6920}
    assert sweep.report_mismatch(old, expected) == [
        "clean pool drawn from the victim's training rows (made before the pool was held out)"]
    new = {**old, "sizes": {"victim_train": 6120, "clean_pool_overlap": 0}}
    assert sweep.report_mismatch(new, expected) == []


def test_a_report_made_with_other_victim_settings_or_before_a_defense_option_is_flagged(tmp_path):
    """Full-scale victims once trained three epochs of 32; bedkd once ran every trust batch each epoch."""
    (tmp_path / "g.yaml").write_text("scale: full\ndatasets: [sst2]\nattacks: [badnets]\n"
                                     "defenses: [{label: bedkd-fixed, name: bedkd}]\n")
    cell = load_grid(str(tmp_path / "g.yaml")).cells[0]
    expected = expected_settings(cell, scale="full", model=None)
    assert expected["victim"] == {"epochs": 1, "batch_size": 16, "batching": "by_length"}
    new = {**fake_report(cell, "full"), "sizes": {"clean_pool_overlap": 0}}
    new["victim_config"] = {"model": "minilm", **expected["victim"]}
    assert sweep.report_mismatch(new, expected) == []
    old = {**new, "victim_config": {"model": "minilm", "epochs": 3, "batch_size": 32},
           "defense": {k: v for k, v in new["defense"].items() if k not in ("trust_batches", "batching")}}
    assert sweep.report_mismatch(old, expected) == [
        "victim.batch_size 32 ≠ 16", "victim.epochs 3 ≠ 1",
        "defense.trust_batches None (made before the option was recorded) ≠ 20",
        "defense.batching 'shuffle' (made before the option was recorded) ≠ 'by_length'"]


def test_a_report_that_predates_an_option_with_another_old_behaviour_is_flagged(tmp_path):
    """SOS once copied poisoned rows too (negative_rows 'any'); a report without the option was made so."""
    (tmp_path / "sos.yaml").write_text("scale: quick\ndatasets: [sst2]\nattacks: [sos, badnets]\ndefenses: [none]\n")
    grid = load_grid(str(tmp_path / "sos.yaml"))
    for cell in grid.cells:
        expected = expected_settings(cell, scale="quick", model=None)
        old = fake_report(cell, "quick")
        old["attack"] = {k: v for k, v in expected["attack"].items() if k != "negative_rows"}
        assert sweep.report_mismatch(old, expected) == (
            ["attack.negative_rows 'any' (made before the option was recorded) ≠ 'clean'"]
            if cell.attack == "sos" else [])
        assert sweep.report_mismatch({**old, "attack": expected["attack"]}, expected) == []


def test_cell_locked_by_another_sweep_is_left_alone(tmp_path):
    import fcntl

    grid = load_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    cell = grid.cells[0]
    cell.dir(out).mkdir(parents=True)
    with open(cell.dir(out) / sweep.LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert {s.cell.id: s.state for s in sweep_status(grid, out)}[cell.id] == "running"
        runner = FakeRunner()
        run_sweep(grid, out, runner=runner, progress=False)
        assert cell.id not in runner.ran and len(runner.ran) == 3
    assert {s.cell.id: s.state for s in sweep_status(grid, out)}[cell.id] == "interrupted"  # a stale lock file
    run_sweep(grid, out, runner=FakeRunner(), progress=False)
    assert not leftovers(out)


def test_only_limit_and_optional(tmp_path):
    text = SMALL_GRID.replace("datasets: [sst2]", "datasets: [sst2, {label: olid, name: olid, optional: true}]")
    grid = load_grid(write_grid(tmp_path, text))
    assert len(grid.cells) == 8 and sum(c.optional for c in grid.cells) == 4
    out = tmp_path / "out"
    runner = FakeRunner()
    run_sweep(grid, out, runner=runner, progress=False, only=["*/addsent/*"], limit=1)
    assert runner.ran == ["sst2/addsent/none/seed0"]
    runner = FakeRunner()
    run_sweep(grid, out, runner=runner, progress=False)
    assert len(runner.ran) == 3 and not any(c.startswith("olid") for c in runner.ran)
    runner = FakeRunner()
    run_sweep(grid, out, runner=runner, progress=False, include_optional=True, only=["bedkd-*"])
    assert runner.ran == ["olid/badnets/bedkd-tau0.05/seed0", "olid/addsent/bedkd-tau0.05/seed0"]


def test_cli_rejects_bad_arguments_with_exit_2(tmp_path, capsys):
    grid_file = write_grid(tmp_path)
    assert cli_main(["--grid", str(grid_file), "--out", str(tmp_path), "--workers", "2"]) == 2
    assert "use --backend pool (this machine) or ray" in capsys.readouterr().err
    assert cli_main(["--grid", "nope", "--out", str(tmp_path)]) == 2
    assert "bedkd: error: no grid named 'nope'" in capsys.readouterr().err


def test_cli_exits_1_when_a_cell_failed(tmp_path, monkeypatch):
    runner = FakeRunner(fail=["sst2/addsent/none/seed0"])
    monkeypatch.setattr(sweep.command, "run_sweep", lambda *a, **kw: run_sweep(*a, **kw, runner=runner, progress=False))
    assert cli_main(["--grid", str(write_grid(tmp_path)), "--out", str(tmp_path / "out")]) == 1
    assert len(runner.ran) == 4


def test_cli_interrupted_sweep_exits_130_with_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.command, "run_sweep", interrupted)
    assert cli_main(["--grid", str(write_grid(tmp_path)), "--out", str(tmp_path)]) == 130
    assert "interrupted; the cell that was running is not finished" in capsys.readouterr().err


def test_victim_keys_group_cells_that_share_a_model():
    cells = {c.attack: c for c in load_grid("ablation-poison").cells}
    keys = {label: sweep.victim_keys(cell) for label, cell in cells.items()}
    assert keys["badnets-r0.1"] == keys["badnets-n1"]  # the published setting, spelled two ways: one victim
    assert keys["badnets-r0.1"][0] != keys["badnets-r0.01"][0]
    assert len({k[1] for k in keys.values()}) == 1  # one clean-floor model for the whole grid


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(sweep.SweepError, match=r"pip install 'bedkd_core\[ray\]'"):
        run_sweep(write_grid(tmp_path), tmp_path / "out", backend="ray", workers=2, runner=FakeRunner(),
                  progress=False)


# ---------------------------------------------------------------- killed mid-cell

KILL_SCRIPT = """\
import json, os, sys, time
from pathlib import Path
from bedkd_core.sweep import expected_settings, run_sweep

grid, out, log, started = sys.argv[1:5]

def runner(cell, *, out, scale, model):
    with open(log, "a") as handle:
        handle.write(cell.id + "\\n")
    (out / "scores.json").write_text("{}")
    (out / "purified_model").mkdir()
    (out / "purified_model" / "model.safetensors").write_text("weights")
    if cell.attack == "addsent" and os.environ.get("SLEEP_IN_ADDSENT"):
        Path(started).write_text(cell.id)
        time.sleep(600)
    return {"scale": scale, "seed": cell.seed, **{k: v for k, v in expected_settings(cell, scale=scale,
            model=model).items() if k in ("attack", "defense")}, "victim": {"cacc": 0.9, "asr": 0.9}}

run_sweep(grid, out, runner=runner, progress=False)
"""


def test_sigkill_mid_cell_leaves_no_finished_looking_cell_and_resumes(tmp_path):
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    script, log, started = tmp_path / "sweep_script.py", tmp_path / "ran.log", tmp_path / "started"
    script.write_text(KILL_SCRIPT)
    command = [sys.executable, str(script), str(grid_file), str(out), str(log), str(started)]
    proc = subprocess.Popen(command, env={**os.environ, "SLEEP_IN_ADDSENT": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the sweep never reached the sleeping cell"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = out / "small/sst2/addsent/none/seed0"
    assert log.read_text().split() == ["sst2/badnets/none/seed0", "sst2/badnets/bedkd-tau0.05/seed0",
                                       "sst2/addsent/none/seed0"]
    assert not (killed / "report.json").exists() and not (killed / "purified_model").exists()
    states = {s.cell.id: s.state for s in sweep_status(load_grid(grid_file), out)}
    assert list(states.values()) == ["done", "done", "interrupted", "not yet run"]
    log.unlink()
    subprocess.run(command, check=True, capture_output=True)
    assert log.read_text().split() == ["sst2/addsent/none/seed0", "sst2/addsent/bedkd-tau0.05/seed0"]
    assert not leftovers(out)
    assert sorted(p.name for p in killed.iterdir()) == ["purified_model", "report.json", "scores.json"]
    assert all(s.state == "done" for s in sweep_status(load_grid(grid_file), out))


# ---------------------------------------------------------------- Ray backend

FIRST = "sst2/badnets/none/seed0"


def barrier_runner(cell, *, out, scale, model):
    """A fake runner for the Ray and pool workers: every cell but the first waits until another one has started too
    (a barrier in $BEDKD_TEST_BARRIER), so the cells that finish prove that two ran at the same time."""
    start = time.time()
    barrier = Path(os.environ["BEDKD_TEST_BARRIER"])
    met = None
    if cell.id != FIRST:
        (barrier / cell.id.replace("/", "_")).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        met = len(list(barrier.iterdir())) >= 2
    report = fake_report(cell, scale, model)
    report["worker"] = {"pid": os.getpid(), "start": start, "end": time.time(), "met": met}
    return report


@pytest.mark.slow
def test_ray_backend_runs_cells_on_two_workers_with_the_same_files(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    (tmp_path / "barrier").mkdir()
    monkeypatch.setenv("BEDKD_TEST_BARRIER", str(tmp_path / "barrier"))  # BEDKD_* variables reach the workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO_ROOT)])}})
    try:
        result = run_sweep(grid_file, out, backend="ray", workers=2, runner=barrier_runner, progress=False, limit=3)
        assert [o["state"] for o in result.outcomes] == ["done"] * 3
        workers = {o["cell"]: json.loads((out / "small" / o["cell"] / "report.json").read_text())["worker"]
                   for o in result.outcomes}
        assert os.getpid() not in {w["pid"] for w in workers.values()}
        first = workers.pop(FIRST)
        # every cell may train the shared clean-floor model: the first runs alone, the next two side by side
        assert all(first["end"] <= w["start"] for w in workers.values()), "cells sharing an uncached model overlapped"
        assert all(w["met"] for w in workers.values()), "two cells should run at the same time"
        assert len({w["pid"] for w in workers.values()}) == 2
        again = run_sweep(grid_file, out, backend="ray", workers=2, runner=barrier_runner, progress=False)
        assert [o["cell"] for o in again.outcomes] == ["sst2/addsent/bedkd-tau0.05/seed0"]
    finally:
        ray.shutdown()
    assert not leftovers(out)
    assert json.loads((out / "small/sst2/addsent/bedkd-tau0.05/seed0/report.json").read_text())["sweep"]["backend"] \
        == "ray"


def test_pool_backend_runs_cells_in_two_processes_with_the_same_files(tmp_path, monkeypatch):
    grid_file, out = write_grid(tmp_path), tmp_path / "out"
    (tmp_path / "barrier").mkdir()
    monkeypatch.setenv("BEDKD_TEST_BARRIER", str(tmp_path / "barrier"))
    result = run_sweep(grid_file, out, backend="pool", workers=2, runner=barrier_runner, progress=False, limit=3)
    assert [o["state"] for o in result.outcomes] == ["done"] * 3
    workers = {o["cell"]: json.loads((out / "small" / o["cell"] / "report.json").read_text())["worker"]
               for o in result.outcomes}
    assert os.getpid() not in {w["pid"] for w in workers.values()}
    first = workers.pop(FIRST)
    assert all(first["end"] <= w["start"] for w in workers.values()), "cells sharing an uncached model overlapped"
    assert all(w["met"] for w in workers.values()), "two cells should run at the same time"
    assert json.loads((out / "small" / FIRST / "report.json").read_text())["sweep"]["backend"] == "pool"
    assert not leftovers(out)


def test_schedule_starts_cells_that_train_new_models_first():
    """Once a grid's clean floor is cached, cells that would train a new victim go before the defenses of
    victims already trained, and never two at once that may train the same one."""
    from bedkd_core.sweep.schedule import schedule

    cells = load_grid("ablation-poison").cells
    none_cells = [c for c in cells if c.defense == "none"][:3]
    defended = [c for c in cells if c.attack == none_cells[0].attack and c.defense != "none"][:2]
    todo = [none_cells[0], *defended, *none_cells[1:]]
    started, running, ended = [], {}, []

    def start(cell):
        started.append(cell.id)
        running[cell.id] = cell
        return cell.id

    def wait(handles):
        handle = handles[0]  # the oldest cell in flight ends first
        running.pop(handle)
        return [(handle, {"cell": handle, "state": "done"}, None)]

    schedule(todo, workers=2, start=start, wait=wait, on_done=lambda o: ended.append(o["cell"]) and False,
             lost=None)
    assert started[0] == none_cells[0].id  # alone: every cell needs the clean floor it trains
    assert started[1:3] == [none_cells[1].id, none_cells[2].id]  # new victims before the defenses
    assert sorted(started) == sorted(c.id for c in todo) == sorted(ended)


# ---------------------------------------------------------------- one real cell

@pytest.mark.slow
def test_real_one_cell_sweep_on_the_cached_quick_victim(tmp_path, capsys):
    """sst2 · badnets · none at quick scale: the cached victim of the other tests, so nothing is trained."""
    grid_file = write_grid(tmp_path, """\
        scale: quick
        with_floor: false
        datasets: [sst2]
        attacks: [badnets]
        defenses: [none]
        """, name="one")
    out = tmp_path / "results"
    assert cli_main(["--grid", str(grid_file), "--out", str(out)]) == 0
    report = json.loads((out / "one/sst2/badnets/none/seed0/report.json").read_text())
    assert report["seconds"]["victim_from_cache"], "expected the cached quick SST-2 BadNets victim"
    assert report["scale"] == "quick" and report["attack"]["poison_rate"] == 0.1
    assert report["victim"]["asr"] > 0.5 and report["sweep"]["grid"] == "one"
    assert report["provenance"]["git_commit"]
    capsys.readouterr()
    assert cli_main(["--grid", str(grid_file), "--out", str(out), "--status"]) == 0
    assert "1 cells: 1 done" in capsys.readouterr().out
    assert not leftovers(out)


def test_provenance_names_the_source_commit_of_a_copied_tree(monkeypatch):
    real_run = subprocess.run

    def stale_git(command, *args, **kwargs):
        assert command[0] != "git", "git must not be asked when the source commit is named"
        return real_run(command, *args, **kwargs)

    monkeypatch.setenv(store.SOURCE_COMMIT_ENV, "abc123")
    monkeypatch.setattr(store.subprocess, "run", stale_git)
    assert store.provenance()["git_commit"].startswith("abc123 (from $BEDKD_SOURCE_COMMIT")
    monkeypatch.delenv(store.SOURCE_COMMIT_ENV)

    def no_git(command, *args, **kwargs):
        if command[0] == "git":
            raise FileNotFoundError("git")
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(store.subprocess, "run", no_git)
    assert store._git_state() == ("unknown", False)


def test_gpu_sweep_script_runs_blocks_in_order_and_packs_finished_cells(tmp_path):
    """gpu/sweep.sh with a stand-in python that records its calls: blocks become --only lists, the archive holds
    the finished reports and no model weights, and a spent budget starts no block."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$*" >> {calls}
        if [ "$1 $2" = "-m bedkd_core" ] && [ "$3" = sweep ] && [[ "$*" != *--status* ]]; then
            mkdir -p "$RESULTS/paper/sst2/badnets/nad/seed0/purified_model"
            echo '{{}}' > "$RESULTS/paper/sst2/badnets/nad/seed0/report.json"
            echo weights > "$RESULTS/paper/sst2/badnets/nad/seed0/purified_model/model.safetensors"
        fi
        """))
    fake.chmod(0o755)
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(out), "RESULTS": str(results), "WHEELS": str(tmp_path)}
    script = Path(__file__).resolve().parent.parent / "gpu" / "sweep.sh"
    run = subprocess.run(["bash", str(script), "sst2/badnets/nad,olid/*/none", "sst2/sos/*"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    sweeps = [line for line in calls.read_text().splitlines() if line.startswith("-m bedkd_core sweep")]
    assert sweeps[0].endswith("--only sst2/badnets/nad --only olid/*/none")
    assert sweeps[1].endswith("--only sst2/sos/*") and "--status" in sweeps[2]
    listing = subprocess.run(["tar", "tzf", str(out / "results.tgz")], capture_output=True, text=True).stdout
    assert "paper/sst2/badnets/nad/seed0/report.json" in listing and "purified_model" not in listing
    spent = subprocess.run(["bash", str(script), "sst2/sos/*"], env={**env, "BUDGET_S": "10"},
                           capture_output=True, text=True, cwd=tmp_path)
    assert "deadline: block 'sst2/sos/*' not started" in spent.stdout


@pytest.mark.parametrize("grid_name", ["paper", "full"])
def test_reports_written_by_real_runs_match_their_grid_cells(grid_name):
    """The stored reports (run_experiment's JSON, RAP given the attack's target as its protected label) differ
    from their cells in nothing but the known reasons awaiting a rerun (full-scale pools drawn from the victim's
    rows; SOS copies of poisoned rows; the full scale's settings before the faster CPU path): the expected
    settings pass through the same threat model and JSON round trip."""
    repo = Path(__file__).resolve().parent.parent
    grid = load_grid(grid_name)
    stored = [(c, store.read_json(c.dir(repo / "results") / "report.json")) for c in grid.cells]
    stored = [(c, r) for c, r in stored if r is not None]
    known = {sweep.POOL_DIFF, "attack.negative_rows 'any' (made before the option was recorded) ≠ 'clean'",
             "victim.batch_size 32 ≠ 16", "victim.epochs 3 ≠ 1", "defense.batching 'shuffle' ≠ 'by_length'",
             "defense.trust_batches None (made before the option was recorded) ≠ 20",
             "defense.batching 'shuffle' (made before the option was recorded) ≠ 'by_length'",
             "defense.patience None (made before the option was recorded) ≠ 10"}
    other = {c.id: [d for d in sweep.report_mismatch(r, expected_settings(c, scale=r["scale"], model=None))
                    if d not in known] for c, r in stored}
    assert stored and not any(other.values()), {k: v for k, v in other.items() if v}
