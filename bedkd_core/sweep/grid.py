"""Grid files: the schema, validation against the live registries, and the cells a grid expands into."""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from ..data import NUM_CLASSES, DataError
from ..options import coerce, options_of
from ..store import REPO_ROOT, cell_dir

GRIDS_DIR = REPO_ROOT / "grids"

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
TOP_KEYS = ("name", "description", "scale", "seeds", "with_floor", "datasets", "attacks", "defenses", "exclude",
            "notes")
ENTRY_KEYS = {"datasets": ("label", "name", "optional", "requires", "note"),
              "attacks": ("label", "name", "options", "optional", "requires", "note"),
              "defenses": ("label", "name", "options", "optional", "requires", "note")}


class GridError(DataError):
    """A grid file that cannot be read or names something that does not exist."""


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
        return cell_dir(grid=self.grid, dataset=self.dataset, attack=self.attack, defense=self.defense,
                        seed=self.seed, root=out)

    def attack_config(self):
        from ..attacks import AttackConfig

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
        from ..experiments import SCALES

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
        from ..attacks import ATTACKS, AttackConfig

        name = entry["name"]
        if name not in ATTACKS:
            return [f"unknown attack {name!r}: valid are {', '.join(ATTACKS)}"]
        allowed = [name for name in options_of(AttackConfig) if name not in ("name", "seed")]
        problems = []
        for key, value in entry.get("options", {}).items():
            if key in ("name", "seed"):
                problems.append(f"option {key!r} cannot be set here: the attack is `name:` and the seed comes from "
                                f"the grid's `seeds:`")
            elif key not in allowed:
                problems.append(f"unknown attack option {key!r}: valid are {', '.join(allowed)}")
            else:
                try:
                    coerce(AttackConfig, key, value, what="attack")
                except DataError as err:
                    problems.append(str(err))
        options = entry.get("options", {})
        if not problems:
            try:
                AttackConfig(name=name, **options)
            except DataError as err:
                problems.append(str(err))
        rate = options.get("poison_rate")
        if not problems and rate is not None and not 0 < rate < 1:
            problems.append(f"poison_rate {rate} is outside (0, 1)")
        if not problems and options.get("num_insertions", 1) < 1:
            problems.append(f"num_insertions {options['num_insertions']} is below 1")
        if not problems and name == "file" and not options.get("poison_dir"):
            problems.append("attack 'file' needs options: {poison_dir: FOLDER}")
        return problems

    def check_defenses(self, entry: dict) -> list[str]:
        from ..defenses import DEFENSES, make_defense_config

        name = entry["name"]
        if name not in DEFENSES:
            return [f"unknown defense {name!r}: valid are {', '.join(DEFENSES)}"]
        options = entry.get("options", {})
        try:
            config = make_defense_config(name, scale=self.scale, **dict(options))
        except (DataError, TypeError, ValueError) as err:
            return [str(err)]
        problems = []
        for key, value in options.items():  # an option the config silently dropped would make a wrong cell
            if getattr(config, key, _MISSING) != (tuple(value) if isinstance(value, list) else value):
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


def expected_cells(grid: str | Path | Grid, *, include_optional: bool = False,
                   include_unsupported: bool = False) -> list[tuple[str, str, str]]:
    """(dataset, attack, defense) of a grid's cells at seed 0: the `expected` list of `book.results_frame`."""
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    return [(c.dataset, c.attack, c.defense) for c in grid.cells if c.seed == 0
            and (include_optional or not c.optional) and (include_unsupported or not c.unsupported)]
