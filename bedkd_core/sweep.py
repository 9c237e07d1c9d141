"""Sweeps: run every cell of a grid of experiments, resumably, and say where each cell stands.

A grid is a YAML file in `grids/` (data, not code). Its cells are the product of its datasets, attacks,
defenses and seeds; each cell is one `run_experiment` whose results land in
`<out>/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json`, the layout `bedkd_core.book` reads.
The labels in the grid become those path components.

Grid file format (every key but `datasets`, `attacks` and `defenses` is optional)::

    name: paper                # results folder <out>/<name>/; default: the file name without .yaml
    description: ...
    scale: full                # default scale of the grid (the CLI's --scale overrides it)
    seeds: [0]
    with_floor: true           # also measure the clean-model ASR floor (one extra, cached, victim per dataset)
    datasets: [sst2, olid]     # a name, or {label:, name:, optional:, requires:, note:}
    attacks:
      - badnets                # shorthand for {label: badnets, name: badnets}: the published settings
      - label: badnets-r0.01   # the attack's folder name in the results
        name: badnets          # a key of bedkd_core.attacks.ATTACKS
        options: {poison_rate: 0.01}   # AttackConfig fields (all but name and seed)
    defenses:
      - none
      - label: bedkd-tau0.05
        name: bedkd            # a key of bedkd_core.defenses.DEFENSES
        options: {tau: 0.05}   # passed to run_experiment(defense_options=...); BeDKD takes `preset` too
      - label: onion
        name: onion
        requires: an ONION baseline in bedkd_core.defenses   # not implemented yet: reported, never run
    exclude: ["agnews/sos/*"]  # cell patterns (dataset/attack/defense/seedN) left out of the product

An entry marked `optional: true` makes its cells optional: listed by `--status`, run only with `--optional`.
An entry with `requires:` names something the library may still lack; while validation fails for it, its cells
are *unsupported*: reported by the sweep and by `--status`, never run and never silently dropped. An invalid entry
without `requires:` is an error that names the file, the entry and the valid choices.

A cell is finished when its `report.json` exists; `run_experiment` writes it atomically and last. The sweep
runs each cell in a hidden staging folder inside the cell folder and moves the artifacts in only when the run
has finished, report.json last, so a killed cell never looks finished and is simply run again. A failed
cell leaves `error.json` (shown by `--status`, retried by the next sweep). A cell folder is locked while a
sweep runs it, so two sweeps over the same results never run the same cell at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import yaml

from .data import NUM_CLASSES, DataError
from .store import REPO_ROOT, REPORT, provenance, read_json, write_json_atomic

GRIDS_DIR = REPO_ROOT / "grids"

ERROR = "error.json"
LOCK = ".sweep.lock"
STAGING_PREFIX = ".partial-"
ARTIFACTS = ("purified_model", "scores.json", "curve.json")
"""What run_experiment writes into a cell folder besides report.json; a folder with only these is unfinished."""

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
TOP_KEYS = ("name", "description", "scale", "seeds", "with_floor", "datasets", "attacks", "defenses", "exclude",
            "notes")
ENTRY_KEYS = {"datasets": ("label", "name", "optional", "requires", "note"),
              "attacks": ("label", "name", "options", "optional", "requires", "note"),
              "defenses": ("label", "name", "options", "optional", "requires", "note")}

DONE, FAILED, NOT_RUNNABLE, NOT_RUN, INTERRUPTED, RUNNING, MISMATCH, UNSUPPORTED = (
    "done", "failed", "not runnable", "not yet run", "interrupted", "running", "mismatch", "unsupported")
TO_RUN = (NOT_RUN, INTERRUPTED, FAILED, NOT_RUNNABLE)
"""States a sweep runs (again); `not runnable` is a failure for want of a resource here (defenses.NotRunnable)."""


class GridError(DataError):
    """A grid file that cannot be read or names something that does not exist."""


class SweepError(DataError):
    """A sweep that cannot start (missing backend, bad arguments)."""


# ---------------------------------------------------------------- grids and cells

@dataclass(frozen=True)
class Cell:
    """One experiment of a grid: labels (the result path) and what to run (names and options)."""

    grid: str
    dataset: str
    attack: str
    defense: str
    seed: int
    dataset_name: str
    attack_name: str
    attack_options: dict = field(default_factory=dict, compare=False)
    defense_name: str = "none"
    defense_options: dict = field(default_factory=dict, compare=False)
    with_floor: bool = True
    optional: bool = False
    unsupported: str | None = None
    """Why this cell cannot run with the library as it is (None when it can)."""

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.attack}/{self.defense}/seed{self.seed}"

    def dir(self, out: str | Path) -> Path:
        return Path(out) / self.grid / self.dataset / self.attack / self.defense / f"seed{self.seed}"

    def attack_config(self):
        from .attacks import AttackConfig

        options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.attack_options.items()}
        return AttackConfig(name=self.attack_name, seed=self.seed, **options)


@dataclass
class Grid:
    name: str
    path: Path
    sha256: str
    scale: str | None
    seeds: list[int]
    cells: list[Cell]
    description: str = ""

    def select(self, only: Iterable[str] | None = None, *, include_optional: bool = True) -> list[Cell]:
        """Cells matching any pattern of `only` (see `match_cell`), optional ones only if asked."""
        patterns = list(only or [])
        return [c for c in self.cells if (include_optional or not c.optional)
                and (not patterns or any(match_cell(c, p) for p in patterns))]


def match_cell(cell: Cell, pattern: str) -> bool:
    """A glob over `dataset/attack/defense/seedN` (missing trailing parts match anything); a pattern without
    `/` matches when it matches any one of the four parts, e.g. `bedkd-*` or `sst2`."""
    parts = cell.id.split("/")
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(p, pattern) for p in parts)
    given = pattern.strip("/").split("/")
    return len(given) <= 4 and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, given))


def grid_path(name_or_file: str | Path) -> Path:
    """A YAML file given by path, or `grids/<name>.yaml` (in this checkout, then in the working directory)."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise GridError(f"grid file {candidate} does not exist")
        return candidate
    for folder in (GRIDS_DIR, Path.cwd() / "grids"):
        path = folder / f"{name_or_file}.yaml"
        if path.is_file():
            return path
    names = sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))
    raise GridError(f"no grid named {str(name_or_file)!r}: use a YAML file or one of {', '.join(names) or '(none)'} "
                    f"in {GRIDS_DIR}")


def load_grid(name_or_file: str | Path, *, scale: str | None = None) -> Grid:
    """Read and validate a grid file against the live registries; raise GridError listing every problem.

    `scale` is the scale the cells will run at (it decides BeDKD's default preset); default: the grid's own.
    """
    path = grid_path(name_or_file)
    text = path.read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        raise GridError(f"{where}: malformed YAML: {problem}" + (f" ({context})" if context else "")) from None
    if not isinstance(spec, dict):
        raise GridError(f"{path}: a grid file is a YAML mapping with datasets, attacks and defenses, "
                        f"got {type(spec).__name__}")
    return _Validator(path, spec, text, scale).grid()


class _Validator:
    def __init__(self, path: Path, spec: dict, text: str, scale: str | None):
        self.path, self.spec, self.text = path, spec, text
        self.errors: list[str] = []
        self.scale_arg = scale

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")

    def grid(self) -> Grid:
        from .experiments import SCALES

        spec = self.spec
        unknown = sorted(set(spec) - set(TOP_KEYS))
        if unknown:
            self.error("", f"unknown key(s) {', '.join(map(str, unknown))}: valid keys are {', '.join(TOP_KEYS)}")
        name = spec.get("name", self.path.stem)
        if not isinstance(name, str) or not LABEL_RE.match(name):
            self.error("name", f"{name!r} is not a usable folder name (letters, digits, . _ + = -)")
        grid_scale = spec.get("scale")
        if grid_scale is not None and grid_scale not in SCALES:
            self.error("scale", f"unknown scale {grid_scale!r}: valid are {', '.join(SCALES)}")
        self.scale = self.scale_arg or (grid_scale if grid_scale in SCALES else None) or \
            os.environ.get("BEDKD_SCALE", "quick")
        seeds = spec.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               and s >= 0 for s in seeds):
            self.error("seeds", f"{seeds!r}: give a list of non-negative integers, e.g. [0, 1, 2]")
            seeds = [0]
        elif len(set(seeds)) != len(seeds):
            self.error("seeds", f"{seeds!r} repeats a seed")
        with_floor = spec.get("with_floor", True)
        if not isinstance(with_floor, bool):
            self.error("with_floor", f"{with_floor!r}: use true or false")
        exclude = spec.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
            self.error("exclude", f"{exclude!r}: give a list of cell patterns such as 'agnews/sos/*'")
            exclude = []
        entries = {kind: self.entries(kind) for kind in ("datasets", "attacks", "defenses")}
        cells = []
        for d in entries["datasets"]:
            for a in entries["attacks"]:
                for f in entries["defenses"]:
                    for seed in seeds:
                        cell = Cell(grid=str(name), dataset=d["label"], attack=a["label"], defense=f["label"],
                                    seed=seed, dataset_name=d["name"], attack_name=a["name"],
                                    attack_options=a.get("options", {}), defense_name=f["name"],
                                    defense_options=f.get("options", {}), with_floor=bool(with_floor),
                                    optional=any(e.get("optional", False) for e in (d, a, f)))
                        if any(match_cell(cell, p) for p in exclude):
                            continue
                        reasons = [e["unsupported"] for e in (d, a, f) if e.get("unsupported")]
                        if not reasons:
                            reasons = self.cell_problems(cell, a)
                        cells.append(dataclasses.replace(cell, unsupported="; ".join(reasons) or None))
        if self.errors:
            raise GridError(f"{len(self.errors)} problem(s) in grid file {self.path}:\n  " + "\n  ".join(self.errors))
        return Grid(name=str(name), path=self.path, sha256=hashlib.sha256(self.text.encode()).hexdigest(),
                    scale=grid_scale, seeds=list(seeds), cells=cells, description=str(spec.get("description", "")))

    def entries(self, kind: str) -> list[dict]:
        raw = self.spec.get(kind)
        if not isinstance(raw, list) or not raw:
            self.error(kind, f"missing or empty: give a list of {kind}")
            return []
        out, labels = [], {}
        for index, item in enumerate(raw):
            entry = {"label": item, "name": item} if isinstance(item, str) else item
            if not isinstance(entry, dict):
                self.error(f"{kind}[{index}]", f"{item!r}: give a name or a mapping with label and name")
                continue
            entry = dict(entry)
            entry.setdefault("name", entry.get("label"))
            entry.setdefault("label", entry.get("name"))
            label = entry["label"]
            where = f"{kind}[{index}] ({label!r})"
            unknown = sorted(set(entry) - set(ENTRY_KEYS[kind]), key=str)
            if unknown:
                self.error(where, f"unknown key(s) {', '.join(map(str, unknown))}: valid keys are "
                                  f"{', '.join(ENTRY_KEYS[kind])}")
                continue
            if not isinstance(label, str) or not LABEL_RE.match(label):
                self.error(where, f"label {label!r} is not a usable folder name (letters, digits, . _ + = -)")
                continue
            if label in labels:
                self.error(where, f"label {label!r} repeats {kind}[{labels[label]}]")
                continue
            labels[label] = index
            for key in ("optional",):
                if not isinstance(entry.get(key, False), bool):
                    self.error(where, f"{key}: {entry[key]!r}: use true or false")
            options = entry.get("options", {})
            if options is None:
                options = entry["options"] = {}
            if not isinstance(options, dict):
                self.error(where, f"options: {options!r}: give a mapping of option: value")
                continue
            problems = getattr(self, f"check_{kind}")(entry)
            if problems:
                if entry.get("requires"):
                    entry["unsupported"] = f"{kind[:-1]} {label!r} requires {entry['requires']}: " + "; ".join(problems)
                else:
                    for problem in problems:
                        self.error(where, problem)
                    continue
            out.append(entry)
        return out

    def check_datasets(self, entry: dict) -> list[str]:
        name = entry["name"]
        if not isinstance(name, str):
            return [f"name {name!r} is not a string"]
        if name in NUM_CLASSES:
            return []
        folder = Path(name) if Path(name).is_absolute() else (self.path.parent / name)
        if folder.is_dir():
            entry["name"] = str(folder.resolve())
            return []
        return [f"unknown dataset {name!r}: valid are {', '.join(NUM_CLASSES)} or a folder with train/dev/test files"]

    def check_attacks(self, entry: dict) -> list[str]:
        from .attacks import ATTACKS, AttackConfig

        name = entry["name"]
        if name not in ATTACKS:
            return [f"unknown attack {name!r}: valid are {', '.join(ATTACKS)}"]
        hints = typing.get_type_hints(AttackConfig)
        allowed = [f.name for f in dataclasses.fields(AttackConfig) if f.name not in ("name", "seed")]
        problems = []
        for key, value in entry.get("options", {}).items():
            if key in ("name", "seed"):
                problems.append(f"option {key!r} cannot be set here: the attack is `name:` and the seed comes from "
                                f"the grid's `seeds:`")
            elif key not in allowed:
                problems.append(f"unknown attack option {key!r}: valid are {', '.join(allowed)}")
            elif not _type_ok(value, hints[key]):
                problems.append(_type_message(key, value, hints[key]))
        options = entry.get("options", {})
        if not problems and options.get("label_mode", "dirty") not in ("dirty", "clean"):
            problems.append(f"label_mode {options['label_mode']!r}: valid are dirty, clean")
        rate = options.get("poison_rate")
        if not problems and rate is not None and not 0 < rate < 1:
            problems.append(f"poison_rate {rate} is outside (0, 1)")
        if not problems and options.get("num_insertions", 1) < 1:
            problems.append(f"num_insertions {options['num_insertions']} is below 1")
        if not problems and name == "file" and not options.get("poison_dir"):
            problems.append("attack 'file' needs options: {poison_dir: FOLDER}")
        return problems

    def check_defenses(self, entry: dict) -> list[str]:
        from .defenses import DEFENSES, make_defense_config

        name = entry["name"]
        if name not in DEFENSES:
            return [f"unknown defense {name!r}: valid are {', '.join(DEFENSES)}"]
        options = entry.get("options", {})
        try:
            config = make_defense_config(name, scale=self.scale, **dict(options))
        except (DataError, TypeError, ValueError) as err:
            return [str(err)]
        hints = typing.get_type_hints(type(config))
        problems = []
        for key, value in options.items():
            if key in hints and not _type_ok(value, hints[key]):
                problems.append(_type_message(key, value, hints[key]))
            elif getattr(config, key, _MISSING) != (tuple(value) if isinstance(value, list) else value):
                problems.append(f"option {key}: {value!r} is not applied by make_defense_config "
                                f"(the config has {key}={getattr(config, key, '(no such field)')!r})")
        return problems

    def cell_problems(self, cell: Cell, attack_entry: dict) -> list[str]:
        """Checks that need both the dataset and the attack."""
        target = cell.attack_options.get("target_label")
        classes = NUM_CLASSES.get(cell.dataset_name)
        if target is not None and classes is not None and not 0 <= target < classes:
            message = f"target_label {target} does not exist in {cell.dataset_name} (labels 0..{classes - 1})"
            if attack_entry.get("requires"):
                return [message]
            self.error(f"cell {cell.id}", message)
        return []


_MISSING = object()


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else True
    return True


def _type_message(key: str, value, hint) -> str:
    wanted = getattr(hint, "__name__", None) or str(hint)
    message = f"option {key}: {value!r} is a {type(value).__name__}, expected {wanted}"
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        message += f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-5)"
    return message


def expected_cells(grid: str | Path | Grid, *, include_optional: bool = False,
                   include_unsupported: bool = False) -> list[tuple[str, str, str]]:
    """(dataset, attack, defense) of a grid's cells at seed 0: the `expected` list of `book.results_frame`."""
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    return [(c.dataset, c.attack, c.defense) for c in grid.cells if c.seed == 0
            and (include_optional or not c.optional) and (include_unsupported or not c.unsupported)]


# ---------------------------------------------------------------- the state of a cell

@dataclass
class CellStatus:
    cell: Cell
    state: str
    detail: str = ""


def expected_settings(cell: Cell, *, scale: str, model: str | None) -> dict:
    """What the report of `cell` must record: scale, seed, model and every attack and defense parameter."""
    from .defenses import make_defense_config, with_threat_model

    attack = cell.attack_config().resolved(cell.dataset_name).asdict()
    options = with_threat_model(cell.defense_name, dict(cell.defense_options), target_label=attack["target_label"])
    defense = {"name": cell.defense_name, **make_defense_config(cell.defense_name, scale=scale, **options).asdict()}
    expected = {"scale": scale, "seed": cell.seed, "model": model or os.environ.get("BEDKD_MODEL", "minilm"),
                "attack": attack, "defense": defense}
    return json.loads(json.dumps(expected))  # as a report stores it: tuples become lists


def report_mismatch(report: dict, expected: dict) -> list[str]:
    """Differences between a finished report and what the cell asks for (keys both sides know)."""
    found = {"scale": report.get("scale"), "seed": report.get("seed"),
             "model": (report.get("victim_config") or {}).get("model"),
             "attack": report.get("attack") or {}, "defense": report.get("defense") or {}}
    diffs = []
    for key in ("scale", "seed", "model"):
        if found[key] is not None and found[key] != expected[key]:
            diffs.append(f"{key} {found[key]!r} ≠ {expected[key]!r}")
    for part in ("attack", "defense"):
        for key in sorted(set(found[part]) & set(expected[part])):
            if found[part][key] != expected[part][key]:
                diffs.append(f"{part}.{key} {found[part][key]!r} ≠ {expected[part][key]!r}")
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
                              + f" (delete {folder} to run it again)")
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
    from .experiments import get_scale

    return get_scale(scale or grid.scale).name


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- running one cell

Runner = Callable[..., "dict | None"]
"""runner(cell, *, out: Path, scale: str, model: str | None) → report dict; writes its files under `out`."""


def run_cell(cell: Cell, *, out: Path, scale: str, model: str | None = None) -> dict:
    """The default runner: `run_experiment` with the cell's settings, writing into `out`."""
    from .experiments import run_experiment

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


def _lock_held(folder: Path) -> bool:
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
                 sweep_info: dict | None = None) -> dict:
    """Run one cell under its lock, in a staging folder, and move the results in with report.json last.

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
        if read_json(folder / REPORT) is not None:
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
        skipped = sum(1 for s in self.statuses if s.state in (DONE, MISMATCH, RUNNING))
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
              runner: Runner | None = None, progress: bool = True, stream=None,
              cpus_per_cell: float | None = None, gpus_per_cell: float | None = None) -> SweepResult:
    """Run the cells of `grid` that are not finished (not yet run, interrupted or failed) into `out_dir`.

    Finished cells (report.json present) are skipped, so rerunning the same command resumes a killed sweep.
    backend: "sequential" (this process, one cell at a time) or "ray" (cells as Ray tasks, `workers` at a time,
    on the cluster at $RAY_ADDRESS or a local one; the results folder must be shared with the workers).
    runner: what runs one cell (default `run_cell`, i.e. `run_experiment`); tests inject a fake one.
    """
    stream = stream or sys.stdout
    grid = grid if isinstance(grid, Grid) else load_grid(grid, scale=scale)
    scale = _effective_scale(grid, scale)
    if backend not in ("sequential", "ray"):
        raise SweepError(f"unknown backend {backend!r}: use sequential or ray")
    if workers < 1:
        raise SweepError(f"--workers {workers}: give at least 1")
    if backend == "sequential" and workers != 1:
        raise SweepError("the sequential backend runs one cell at a time: use --backend ray for --workers > 1")
    if limit is not None and limit < 0:
        raise SweepError(f"--limit {limit}: give a number of cells ≥ 0")
    statuses = sweep_status(grid, out_dir, scale=scale, model=model, only=only, include_optional=include_optional)
    result = SweepResult(grid, statuses)
    todo = [s.cell for s in statuses if s.state in TO_RUN]
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
    kwargs = dict(out_dir=str(out_dir), scale=scale, model=model, runner=runner, sweep_info=sweep_info)
    from .progress import progress as progress_bar

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
        else:
            _run_ray(todo, workers=workers, kwargs=kwargs, on_done=finished, cpus_per_cell=cpus_per_cell,
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


def _run_ray(todo: list[Cell], *, workers: int, kwargs: dict, on_done, cpus_per_cell: float | None,
             gpus_per_cell: float | None) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'bedkd_core[ray]' (or: pip install ray)") from None
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        local = {} if address else {"num_cpus": max(workers, os.cpu_count() or 1)}
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="WARNING", **local)
        started_here = True
    try:
        resources = ray.cluster_resources()
        if cpus_per_cell is None:
            cpus_per_cell = max(1, int(resources.get("CPU", 1) // workers))
        if gpus_per_cell is None:
            gpus_per_cell = 1 if resources.get("GPU", 0) >= 1 else 0
        env = {k: v for k, v in os.environ.items() if k.startswith(("BEDKD_", "HF_", "TRANSFORMERS_"))}
        env["TQDM_DISABLE"] = "1"  # the driver shows the progress; per-epoch bars from workers would interleave
        task = ray.remote(execute_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0,
                                                runtime_env={"env_vars": env})
        keys = {cell.id: victim_keys(cell) for cell in todo}
        warm: set = set()  # victims some finished cell of this sweep has cached
        building: dict = {}  # victim key → cells in flight that may be training it

        def can_start(cell: Cell) -> bool:
            """Never two cells at once that may train the same (not yet cached) victim or clean-floor model:
            they would train it twice and race writing the cache. Once one has finished, the rest share it."""
            return all(key in warm or not building.get(key) for key in keys[cell.id])

        queue, in_flight = list(todo), {}
        stop = False
        while (queue and not stop) or in_flight:
            while queue and not stop and len(in_flight) < workers:
                cell = next((c for c in queue if can_start(c)), None)
                if cell is None:
                    break
                queue.remove(cell)
                for key in keys[cell.id]:
                    building[key] = building.get(key, 0) + 1
                in_flight[task.remote(cell, **kwargs)] = cell
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the worker died (killed, out of memory): record it like a failure
                    outcome = _record_lost_worker(cell, err, kwargs)
                for key in keys[cell.id]:
                    building[key] -= 1
                    if outcome["state"] == DONE:
                        warm.add(key)
                stop = on_done(outcome) or stop
    finally:
        if started_here:
            ray.shutdown()


def victim_keys(cell: Cell) -> list[tuple]:
    """What identifies the models a cell may have to train: its poisoned victim and, with the floor, the clean one
    (scale and model are the same for every cell of a sweep)."""
    attack = json.dumps(cell.attack_config().resolved(cell.dataset_name).asdict(), sort_keys=True)
    keys = [("victim", cell.dataset_name, attack, cell.seed)]
    if cell.with_floor:
        keys.append(("clean", cell.dataset_name, cell.seed))
    return keys


def _record_lost_worker(cell: Cell, err: Exception, kwargs: dict) -> dict:
    folder = cell.dir(kwargs["out_dir"])
    message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    if read_json(folder / REPORT) is None:
        write_json_atomic(folder / ERROR, {"cell": cell.id, "error_type": type(err).__name__, "message": message,
                                           "traceback": str(err), "scale": kwargs["scale"], "model": kwargs["model"],
                                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "sweep": kwargs.get("sweep_info") or {}})
    return {"cell": cell.id, "state": FAILED, "detail": f"{type(err).__name__}: {message}", "seconds": 0.0}


# ---------------------------------------------------------------- command line (wired into cli.py)

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bedkd sweep` to the `bedkd` subcommands."""
    names = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))) or "none found"
    parser = subparsers.add_parser(
        "sweep", help="run every cell of a grid of experiments (resumable), or show where each cell stands",
        description="Run the cells of a grid file that are not finished; rerun the same command to resume or to "
                    "retry failed cells. Results: OUT/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json.")
    parser.add_argument("--grid", required=True, help=f"a grid in grids/ ({names}) or a YAML file")
    parser.add_argument("--out", default=None, help="results root (default: $BEDKD_RESULTS or results/ in the repo)")
    parser.add_argument("--scale", choices=["quick", "full"], default=None,
                        help="default: the grid's scale, else $BEDKD_SCALE, else quick")
    parser.add_argument("--model", default=None, help="hub id or local folder (default: $BEDKD_MODEL or minilm)")
    parser.add_argument("--status", action="store_true", help="show each cell's state (done, failed, not yet run...)"
                                                              " and run nothing")
    parser.add_argument("--backend", choices=["sequential", "ray"], default="sequential",
                        help="ray: cells run as Ray tasks (pip install 'bedkd_core[ray]'; $RAY_ADDRESS or local)")
    parser.add_argument("--workers", type=int, default=1, help="cells at once (ray backend only)")
    parser.add_argument("--only", action="append", default=None, metavar="PATTERN",
                        help="only cells matching dataset/attack/defense/seedN globs, or any one part "
                             "(e.g. 'sst2/badnets/*' or 'bedkd-*'); repeatable")
    parser.add_argument("--limit", type=int, default=None, help="run at most N cells this time")
    parser.add_argument("--optional", action="store_true", help="also run the grid's optional cells")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    return parser


def main(args: argparse.Namespace) -> int:
    """`bedkd sweep`: 0 when every cell tried finished, 1 when some failed, 2 for a bad grid or arguments."""
    try:
        from . import store

        out = Path(args.out) if args.out else store.RESULTS_DIR
        grid = load_grid(args.grid, scale=args.scale)
        if args.status:
            scale = _effective_scale(grid, args.scale)
            print(format_status(grid, sweep_status(grid, out, scale=scale, model=args.model, only=args.only),
                                scale=scale, out=out))
            return 0
        result = run_sweep(grid, out, scale=args.scale, model=args.model, backend=args.backend,
                           workers=args.workers, only=args.only, limit=args.limit, include_optional=args.optional,
                           fail_fast=args.fail_fast)
    except DataError as err:
        print(f"bedkd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bedkd sweep: interrupted; the cell that was running is not finished: run the same command to "
              "resume", file=sys.stderr)
        return 130
    return 1 if result.failed else 0


if __name__ == "__main__":  # python -m bedkd_core.sweep ... (the same options as `bedkd sweep`)
    _parser = argparse.ArgumentParser(prog="python -m bedkd_core.sweep")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    sys.exit(main(_parser.parse_args(["sweep"] + sys.argv[1:])))
