"""The state of a cell: finished (and with the grid's settings?), running, failed, interrupted or not yet run."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..attacks import AttackConfig
from ..options import unrecorded_values
from ..store import REPO_ROOT, REPORT, read_json
from .grid import Cell, Grid

ERROR = "error.json"
"""What a failed cell leaves in its folder (shown by --status, removed when the cell finishes)."""
LOCK = ".sweep.lock"
"""The lock file of a cell a sweep is running (`runner._CellLock`)."""

DONE, FAILED, NOT_RUNNABLE, NOT_RUN, INTERRUPTED, RUNNING, MISMATCH, UNSUPPORTED = (
    "done", "failed", "not runnable", "not yet run", "interrupted", "running", "mismatch", "unsupported")
POOL_DIFF = "clean pool drawn from the victim's training rows (made before the pool was held out)"
"""The difference a full-scale report made before the defender's clean pool was held out shows (`report_mismatch`)."""
TO_RUN = (NOT_RUN, INTERRUPTED, FAILED, NOT_RUNNABLE)
"""States a sweep runs (again); `not runnable` is a failure for want of a resource here (defenses.NotRunnable)."""


@dataclass
class CellStatus:
    cell: Cell
    state: str
    detail: str = ""


def expected_settings(cell: Cell, *, scale: str, model: str | None) -> dict:
    """What the report of `cell` must record: scale, seed, model, the victim's training settings and every attack
    and defense parameter (with the defense's defaults, which a report made before an option existed ran)."""
    from ..experiments import defense_config, get_scale  # what run_experiment will build for this cell

    attack = cell.attack_config().resolved(cell.dataset_name).asdict()
    config = defense_config(cell.defense_name, scale=scale, target_label=attack["target_label"],
                            options=cell.defense_options)
    defense = {"name": cell.defense_name, **config.asdict()}
    victim_scale = get_scale(scale)
    expected = {"scale": scale, "seed": cell.seed, "model": model or os.environ.get("BEDKD_MODEL", "minilm"),
                "attack": attack, "defense": defense,
                "victim": {"epochs": victim_scale.victim_epochs, "batch_size": victim_scale.victim_batch_size,
                           "batching": victim_scale.victim_batching},
                "defense_defaults": {f.name: f.default for f in dataclasses.fields(config)
                                     if f.default is not dataclasses.MISSING}}
    return json.loads(json.dumps(expected))  # as a report stores it: tuples become lists


def report_mismatch(report: dict, expected: dict) -> list[str]:
    """Differences between a finished report and what the cell asks for (keys both sides know)."""
    found = {"scale": report.get("scale"), "seed": report.get("seed"),
             "model": (report.get("victim_config") or {}).get("model"),
             "attack": report.get("attack") or {}, "defense": report.get("defense") or {},
             "victim": report.get("victim_config") or {}}
    diffs = []
    if report.get("scale") == "full" and "clean_pool_overlap" not in (report.get("sizes") or {}):
        diffs.append(POOL_DIFF)
    for key in ("scale", "seed", "model"):
        if found[key] is not None and found[key] != expected[key]:
            diffs.append(f"{key} {found[key]!r} ≠ {expected[key]!r}")
    for part in ("victim", "attack", "defense"):
        for key in sorted(set(found[part]) & set(expected.get(part, {}))):
            if found[part][key] != expected[part][key]:
                diffs.append(f"{part}.{key} {found[part][key]!r} ≠ {expected[part][key]!r}")
    for key, before in unrecorded_values(AttackConfig).items():
        if found["attack"] and key in expected["attack"] and key not in found["attack"] \
                and before != expected["attack"][key]:
            diffs.append(f"attack.{key} {before!r} (made before the option was recorded) ≠ "
                         f"{expected['attack'][key]!r}")
    for key, default in (expected.get("defense_defaults") or {}).items():  # an option added since ran its default
        if found["defense"] and key in expected["defense"] and key not in found["defense"] \
                and default != expected["defense"][key]:
            diffs.append(f"defense.{key} {default!r} (made before the option was recorded) ≠ "
                         f"{expected['defense'][key]!r}")
    return diffs


def cell_status(cell: Cell, out: str | Path, *, scale: str, model: str | None = None) -> CellStatus:
    """done · mismatch (finished with other settings) · running · failed · not runnable (a resource is missing
    here) · interrupted (leftovers of a killed run) · not yet run · unsupported (the grid needs what the library
    lacks)."""
    if cell.unsupported:
        return CellStatus(cell, UNSUPPORTED, cell.unsupported)
    folder = cell.dir(out)
    report_path = folder / REPORT
    if report_path.exists():
        report = read_json(report_path)
        if report is None:
            return CellStatus(cell, INTERRUPTED, "report.json is unreadable: the cell will run again")
        diffs = report_mismatch(report, expected_settings(cell, scale=scale, model=model))
        if diffs:
            return CellStatus(cell, MISMATCH, "finished with other settings: " + "; ".join(diffs)
                              + f" (rerun it with --rerun-mismatched, or delete {folder})")
        return CellStatus(cell, DONE, summarize_report(report))
    if _lock_held(folder):
        return CellStatus(cell, RUNNING, "another sweep is running this cell")
    error = read_json(folder / ERROR)
    if error is not None:
        state = NOT_RUNNABLE if error.get("error_type") == "NotRunnable" else FAILED
        return CellStatus(cell, state, f"{error.get('error_type', 'error')}: {error.get('message', '')}".strip()
                          + f" ({error.get('date', '')[:16]})")
    leftovers = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if leftovers:
        return CellStatus(cell, INTERRUPTED, "no report.json; leftovers of an unfinished run: "
                          + ", ".join(sorted(leftovers)[:4]))
    return CellStatus(cell, NOT_RUN)


def summarize_report(report: dict) -> str:
    """One line: victim → defended CACC/ASR, detection, time, date."""
    def pair(metrics):
        return f"CACC {metrics.get('cacc', float('nan')):.3f} ASR {metrics.get('asr', float('nan')):.3f}"

    parts = [f"victim {pair(report.get('victim') or {})}"]
    if report.get("defended"):
        parts[0] += f" → defended {pair(report['defended'])}"
    if report.get("clean_floor"):
        parts.append(f"floor ASR {report['clean_floor'].get('asr', float('nan')):.3f}")
    detection = report.get("detection") or {}
    if detection.get("precision") is not None:
        parts.append(f"detection P {detection['precision']:.2f} R {detection.get('recall', float('nan')):.3f}")
    seconds = (report.get("seconds") or {}).get("total")
    if seconds is not None:
        parts.append(f"{seconds:.0f} s")
    date = (report.get("provenance") or {}).get("date")
    if date:
        parts.append(date[:10])
    return " · ".join(parts)


def sweep_status(grid: Grid, out: str | Path, *, scale: str | None = None, model: str | None = None,
                 only: Iterable[str] | None = None, include_optional: bool = True) -> list[CellStatus]:
    scale = _effective_scale(grid, scale)
    return [cell_status(c, out, scale=scale, model=model) for c in grid.select(only, include_optional=include_optional)]


def format_status(grid: Grid, statuses: list[CellStatus], *, scale: str, out: str | Path) -> str:
    """A table of cells with their state, and one line of counts."""
    headers = ("dataset", "attack", "defense", "seed", "status", "detail")
    rows = [(s.cell.dataset, s.cell.attack, s.cell.defense, str(s.cell.seed),
             s.state + (" (optional)" if s.cell.optional else ""), s.detail) for s in statuses]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers[:-1])]
    lines = [f"grid {grid.name} ({_display_path(grid.path)}) · scale {scale} · results {Path(out) / grid.name}", ""]
    for row in [headers] + rows:
        lines.append(("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1]).rstrip())
    lines += ["", counts_line(statuses)]
    return "\n".join(lines)


def counts_line(statuses: list[CellStatus]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    order = (DONE, RUNNING, FAILED, NOT_RUNNABLE, INTERRUPTED, NOT_RUN, MISMATCH, UNSUPPORTED)
    return f"{len(statuses)} cells: " + ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def _effective_scale(grid: Grid, scale: str | None) -> str:
    from ..experiments import get_scale

    return get_scale(scale or grid.scale).name


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _lock_held(folder: Path) -> bool:
    """Whether a live process holds the cell's lock (a lock file nobody holds is stale)."""
    path = folder / LOCK
    if not path.exists():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDWR)  # never O_CREAT: looking must not leave a lock file behind
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False
