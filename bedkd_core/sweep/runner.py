"""Running cells: one cell under its lock in a staging folder (`execute_cell`), and a whole sweep (`run_sweep`)."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..data import DataError
from ..store import REPORT, provenance, read_json, write_json_atomic
from .grid import Cell, Grid, load_grid
from .status import (DONE, ERROR, FAILED, LOCK, MISMATCH, RUNNING, TO_RUN, UNSUPPORTED, CellStatus, _display_path,
                     _effective_scale, counts_line, expected_settings, report_mismatch, summarize_report,
                     sweep_status)

STAGING_PREFIX = ".partial-"
ARTIFACTS = ("purified_model", "scores.json", "curve.json")
"""What run_experiment writes into a cell folder besides report.json; a folder with only these is unfinished."""


class SweepError(DataError):
    """A sweep that cannot start (missing backend, bad arguments)."""


# ---------------------------------------------------------------- running one cell

Runner = Callable[..., "dict | None"]
"""runner(cell, *, out: Path, scale: str, model: str | None) → report dict; writes its files under `out`."""


def run_cell(cell: Cell, *, out: Path, scale: str, model: str | None = None) -> dict:
    """The default runner: `run_experiment` with the cell's settings, writing into `out`."""
    from ..experiments import run_experiment

    return run_experiment(dataset=cell.dataset_name, attack=cell.attack_config(), defense=cell.defense_name,
                          defense_options=dict(cell.defense_options), scale=scale, model=model, seed=cell.seed,
                          out=out, with_floor=cell.with_floor)


class _CellLock:
    """An exclusive, non-blocking flock on `<cell>/.sweep.lock`, released by the kernel if the process dies."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.handle = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run without the cross-process guard
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            try:  # the holder before us unlinks the file as it lets go: lock the file that is there now
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                self.handle = handle
                return True
            handle.close()

    def release(self) -> None:
        if self.handle is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.handle.close()
            self.handle = None


def _clean_leftovers(folder: Path) -> None:
    """Remove what killed runs leave (staging folders, half-written temporary files); call under the lock."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(STAGING_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def execute_cell(cell: Cell, *, out_dir: str | Path, scale: str, model: str | None, runner: Runner | None = None,
                 sweep_info: dict | None = None, replace_mismatched: bool = False) -> dict:
    """Run one cell under its lock, in a staging folder, and move the results in with report.json last.

    A cell whose report is already there is skipped, unless `replace_mismatched` and that report was made with
    other settings (then the new run replaces it).

    Returns an outcome {"cell", "state": done|failed|skipped, "detail", "seconds"}; never raises for a failure
    of the run itself (it is recorded in error.json) but lets KeyboardInterrupt through.
    """
    runner = runner or run_cell
    folder = cell.dir(out_dir)
    lock = _CellLock(folder)
    if not lock.acquire():
        return {"cell": cell.id, "state": "skipped", "detail": "another sweep is running it", "seconds": 0.0}
    started = time.perf_counter()
    try:
        found = read_json(folder / REPORT)
        if found is not None and not (replace_mismatched and report_mismatch(
                found, expected_settings(cell, scale=scale, model=model))):
            _clean_leftovers(folder)
            return {"cell": cell.id, "state": "skipped", "detail": "finished meanwhile", "seconds": 0.0}
        _clean_leftovers(folder)
        staging = folder / f"{STAGING_PREFIX}{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            report = runner(cell, out=staging, scale=scale, model=model)
            staged_report = read_json(staging / REPORT)
            if staged_report is None:
                if not isinstance(report, dict):
                    raise RuntimeError("the cell runner returned no report and wrote no report.json")
                staged_report = report
            staged_report["sweep"] = {**(sweep_info or {}), "cell": cell.id,
                                      "labels": {"dataset": cell.dataset, "attack": cell.attack,
                                                 "defense": cell.defense},
                                      "attack_options": cell.attack_options, "defense_options": cell.defense_options,
                                      "host": socket.gethostname(),
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_json_atomic(staging / REPORT, staged_report)
        except Exception as err:  # recorded, shown by --status, retried by the next sweep
            shutil.rmtree(staging, ignore_errors=True)
            message = str(err).strip() or repr(err)
            try:
                prov = provenance()
            except Exception:  # provenance itself failing must not hide the real error
                prov = {}
            write_json_atomic(folder / ERROR, {
                "cell": cell.id, "error_type": type(err).__name__, "message": message,
                "traceback": traceback.format_exc(), "scale": scale, "model": model,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
                "provenance": prov, "sweep": sweep_info or {}})
            return {"cell": cell.id, "state": FAILED, "detail": f"{type(err).__name__}: {message.splitlines()[0]}",
                    "seconds": round(time.perf_counter() - started, 1)}
        _promote(staging, folder)
        return {"cell": cell.id, "state": DONE, "detail": summarize_report(staged_report),
                "seconds": round(time.perf_counter() - started, 1)}
    finally:
        lock.release()


def _promote(staging: Path, folder: Path) -> None:
    """Move the staged artifacts into the cell folder, replacing stale ones; report.json last (atomic rename)."""
    staged = {p.name for p in staging.iterdir()}
    for name in ARTIFACTS:  # stale artifacts of an unfinished earlier run that this run did not produce
        if name not in staged:
            _remove(folder / name)
    for name in sorted(staged - {REPORT}):
        _remove(folder / name)
        os.replace(staging / name, folder / name)
    (folder / ERROR).unlink(missing_ok=True)
    os.replace(staging / REPORT, folder / REPORT)
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    grid: Grid
    statuses: list[CellStatus]
    """The state of every selected cell before the sweep ran."""
    outcomes: list[dict] = field(default_factory=list)
    """One per cell the sweep tried: {"cell", "state", "detail", "seconds"}."""

    @property
    def failed(self) -> list[dict]:
        return [o for o in self.outcomes if o["state"] == FAILED]

    def summary(self) -> str:
        ran = [o for o in self.outcomes if o["state"] == DONE]
        tried = {o["cell"] for o in self.outcomes}
        skipped = sum(1 for s in self.statuses if s.state in (DONE, MISMATCH, RUNNING) and s.cell.id not in tried)
        unsupported = sum(1 for s in self.statuses if s.state == UNSUPPORTED)
        parts = [f"{len(ran)} cell(s) finished", f"{len(self.failed)} failed"]
        if skipped:
            parts.append(f"{skipped} already done or running elsewhere (skipped)")
        if unsupported:
            parts.append(f"{unsupported} unsupported (not run)")
        left = len(self.statuses) - skipped - unsupported - len(self.outcomes)
        if left > 0:
            parts.append(f"{left} left for a later sweep")
        return f"sweep {self.grid.name}: " + ", ".join(parts)


def run_sweep(grid: str | Path | Grid, out_dir: str | Path, *, scale: str | None = None, model: str | None = None,
              backend: str = "sequential", workers: int = 1, only: Iterable[str] | None = None,
              limit: int | None = None, include_optional: bool = False, fail_fast: bool = False,
              rerun_mismatched: bool = False, runner: Runner | None = None, progress: bool = True, stream=None,
              cpus_per_cell: float | None = None, gpus_per_cell: float | None = None) -> SweepResult:
    """Run the cells of `grid` that are not finished (not yet run, interrupted or failed) into `out_dir`.

    Finished cells (report.json present) are skipped, so rerunning the same command resumes a killed sweep.
    backend: "sequential" (this process, one cell at a time), "pool" (`workers` processes of this machine, e.g.
    sharing one GPU) or "ray" (cells as Ray tasks, `workers` at a time,
    on the cluster at $RAY_ADDRESS or a local one; the results folder must be shared with the workers).
    rerun_mismatched: also rerun cells finished with other settings (their new report replaces the old one).
    runner: what runs one cell (default `run_cell`, i.e. `run_experiment`); tests inject a fake one.
    """
    stream = stream or sys.stdout
    grid = grid if isinstance(grid, Grid) else load_grid(grid, scale=scale)
    scale = _effective_scale(grid, scale)
    if backend not in ("sequential", "pool", "ray"):
        raise SweepError(f"unknown backend {backend!r}: use sequential, pool or ray")
    if workers < 1:
        raise SweepError(f"--workers {workers}: give at least 1")
    if backend == "sequential" and workers != 1:
        raise SweepError("the sequential backend runs one cell at a time: use --backend pool (this machine) or "
                         "ray (a cluster) for --workers > 1")
    if limit is not None and limit < 0:
        raise SweepError(f"--limit {limit}: give a number of cells ≥ 0")
    statuses = sweep_status(grid, out_dir, scale=scale, model=model, only=only, include_optional=include_optional)
    result = SweepResult(grid, statuses)
    todo = [s.cell for s in statuses if s.state in TO_RUN or (rerun_mismatched and s.state == MISMATCH)]
    if limit is not None:
        todo = todo[:limit]
    print(f"grid {grid.name} ({_display_path(grid.path)}) · scale {scale} · model "
          f"{model or os.environ.get('BEDKD_MODEL', 'minilm')} · backend {backend} · results "
          f"{Path(out_dir) / grid.name}\n{counts_line(statuses)} · {len(todo)} to run now", file=stream)
    _print_unrunnable(statuses, stream)
    if not todo:
        print(result.summary(), file=stream)
        return result
    sweep_info = {"grid": grid.name, "grid_file": _display_path(grid.path), "grid_sha256": grid.sha256,
                  "backend": backend, "scale": scale}
    kwargs = dict(out_dir=str(out_dir), scale=scale, model=model, runner=runner, sweep_info=sweep_info,
                  replace_mismatched=rerun_mismatched)
    from ..progress import progress as progress_bar

    bar = progress_bar(total=len(todo), desc=f"sweep {grid.name}", unit="cell", disable=not progress or None,
                       file=sys.stderr, dynamic_ncols=True)
    index = 0

    def finished(outcome: dict) -> bool:
        nonlocal index
        index += 1
        result.outcomes.append(outcome)
        mark = {"done": "done", "failed": "FAILED", "skipped": "skipped"}[outcome["state"]]
        line = f"[{index}/{len(todo)}] {mark:<7} {outcome['cell']}: {outcome['detail']}"
        if outcome["state"] == FAILED:
            line += f" — see {Path(out_dir) / grid.name / outcome['cell'] / ERROR}"
        bar.update(1)
        bar.write(line, file=stream)
        return fail_fast and outcome["state"] == FAILED

    try:
        if backend == "sequential":
            for cell in todo:
                if finished(execute_cell(cell, **kwargs)):
                    break
        elif backend == "pool":
            from .pool_backend import run_pool  # it imports execute_cell from here

            run_pool(todo, workers=workers, kwargs=kwargs, on_done=finished)
        else:
            from .ray_backend import run_ray

            run_ray(todo, workers=workers, kwargs=kwargs, on_done=finished, cpus_per_cell=cpus_per_cell,
                    gpus_per_cell=gpus_per_cell)
    finally:
        bar.close()
    print(result.summary(), file=stream)
    return result


def _print_unrunnable(statuses: list[CellStatus], stream) -> None:
    """Unsupported cells grouped by reason, mismatched and running cells one by one: nothing is skipped silently."""
    groups: dict[str, list[str]] = {}
    for s in statuses:
        if s.state == UNSUPPORTED:
            groups.setdefault(s.detail, []).append(s.cell.id)
    for reason, ids in groups.items():
        print(f"unsupported, not run ({len(ids)} cell(s), e.g. {ids[0]}): {reason}", file=stream)
    for s in statuses:
        if s.state in (MISMATCH, RUNNING):
            print(f"{s.state}, not run: {s.cell.id}: {s.detail}", file=stream)
