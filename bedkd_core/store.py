"""The results store: where reports live, how files are written (atomically) and read, and their provenance.

One layout for every writer and reader: `<root>/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json`,
with `root` = $BEDKD_RESULTS, else `results/` in the repository. A report's provenance (commit, device, date,
versions) is taken by `provenance()`; a known-wrong recorded commit is never edited in the report but corrected
on reading through `results/provenance-corrections.json`.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from . import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("BEDKD_RESULTS", REPO_ROOT / "results"))
"""The results root every reader and writer uses by default (tests point it elsewhere)."""

REPORT = "report.json"
CORRECTIONS = "provenance-corrections.json"
"""Known-wrong provenance commits of stored reports, each with the commit that really ran and why."""

SOURCE_COMMIT_ENV = "BEDKD_SOURCE_COMMIT"
"""The commit a copied tree was taken from (say on a GPU machine without the repository's history); provenance
records it instead of asking git, whose .git there may be missing or older than the tree it came with."""


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside `path`; on a clean exit it replaces `path` in one rename, so a kill at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """A temporary folder beside `folder`, filled by the caller, then swapped in for `folder` on a clean exit."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str | Path, payload: dict, *, indent: int | None = 2) -> None:
    """Write `payload` as JSON (indented unless `indent` is None) at `path` atomically."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=indent, separators=None if indent else (",", ":"))


def read_json(path: str | Path) -> dict | None:
    """A JSON object from `path`, or None when the file is missing, unreadable or not an object."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


# ---------------------------------------------------------------- the layout

def cell_dir(*, grid: str, dataset: str, attack: str, defense: str, seed: int = 0,
             root: str | Path | None = None) -> Path:
    """The folder of one cell's results."""
    return Path(root or RESULTS_DIR) / grid / dataset / attack / defense / f"seed{seed}"


def grids(*, root: str | Path | None = None) -> list[str]:
    """The names of the grids that have a folder under the results root."""
    root = Path(root or RESULTS_DIR)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def load_reports(grid: str, *, root: str | Path | None = None) -> list[dict]:
    """Every report of a grid, each with its cell coordinates added under `cell` (and its provenance corrected
    where the corrections file says the recorded commit is wrong)."""
    root = Path(root or RESULTS_DIR)
    reports, corrections = [], provenance_corrections(root=root)
    for path in sorted((root / grid).glob(f"*/*/*/seed*/{REPORT}")):
        dataset, attack, defense, seed = path.parent.relative_to(root / grid).parts
        report = json.loads(path.read_text())
        if "provenance" in report:
            report["provenance"] = corrected_provenance(report["provenance"], corrections, grid=grid)
        report["cell"] = {"dataset": dataset, "attack": attack, "defense": defense, "seed": int(seed[4:]),
                          "dir": str(path.parent)}
        reports.append(report)
    return reports


# ---------------------------------------------------------------- provenance

def _git_state() -> tuple[str, bool]:
    """The checkout's commit and whether tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, dirty


_LOADED_CODE = _git_state()
"""The commit when this process imported bedkd_core: a long sweep keeps running that code while the checkout
moves on, so a report names the code that ran, not the checkout's HEAD when the cell finished."""


def provenance() -> dict:
    """Commit (and whether the tree was dirty), device, date and versions of the code that is running."""
    import torch
    import transformers

    if os.environ.get(SOURCE_COMMIT_ENV):  # named by whoever copied the tree: a copy's own .git can be stale
        commit = f"{os.environ[SOURCE_COMMIT_ENV]} (from ${SOURCE_COMMIT_ENV}: a copy of that commit's tree)"
        dirty = False
    else:
        commit, dirty = _LOADED_CODE
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} threads)")
    return {
        "git_commit": commit + ("-dirty" if dirty else ""),
        "device": device,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"bedkd_core": __version__, "python": platform.python_version(),
                     "torch": torch.__version__, "transformers": transformers.__version__},
    }


def provenance_corrections(*, root: str | Path | None = None) -> list[dict]:
    """The entries of the results root's corrections file (none when it has no such file)."""
    path = Path(root or RESULTS_DIR) / CORRECTIONS
    return json.loads(path.read_text())["corrections"] if path.is_file() else []


def corrected_provenance(provenance: dict, corrections: list[dict], *, grid: str | None = None) -> dict:
    """`provenance` with its commit replaced by the one a matching correction (same commit and device, and the
    same grid where the correction names one) names."""
    for fix in corrections:
        if (provenance.get("git_commit"), provenance.get("device")) == (fix["recorded_commit"], fix["device"]) \
                and fix.get("grid", grid) == grid:
            return {**provenance, "git_commit": fix["source_commit"], "recorded_commit": fix["recorded_commit"],
                    "correction": fix["why"]}
    return provenance
