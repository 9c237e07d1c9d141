"""The teacher's guide's measured times: `python -m bedkd_core.course [--check]`.

The block between `GUIDE_MARKERS` in chapters/teachers_guide.md is written from the benchmark files under
results/benchmarks/: each chapter's Colab copy run top to bottom from an empty cache
(`benchmarks/colab_sim.py --threads 2 --json results/benchmarks/chapter-times.json`) and each assignment's
solution run and graded (`benchmarks/bench_assignments.py`). A test keeps the page in sync with the files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import store
from .data import DataError

GUIDE = store.REPO_ROOT / "chapters" / "teachers_guide.md"
GUIDE_MARKERS = ("<!-- course-times:start -->", "<!-- course-times:end -->")
CHAPTER_TIMES = ("chapter-times.json", "colab.json")
"""Chapter timing files, preferred first: the 2-thread run, else the Colab simulation's 1-thread run."""
ASSIGNMENT_TIMES = "assignments.json"
GPU_PAIR = ("paper", "sst2", "badnets")
"""The one victim trained at full scale both on 2 CPU cores (grid `paper`, defense `none`) and on a GPU
(the same grid's `bedkd-fixed` cell trained its own): the T4 estimate scales by their ratio."""
T4_SLOWDOWN = 10.0
"""Assumed slowdown of a Colab T4 against the H200 of the measured pair: an assumption, not a measurement."""
COLAB_MODEL_COST = (12 * 768**2) / (6 * 384**2)
"""Work per token of bert-base-uncased (12 layers, width 768), which Colab runs, over MiniLM-L6 (6 layers,
width 384), which the measurements ran: layers × width², the size of the dense layers."""


def _benchmark(name: str) -> dict | None:
    path = store.RESULTS_DIR / "benchmarks" / name
    return json.loads(path.read_text()) if path.is_file() else None


def _gpu_speedup() -> tuple[float, str] | None:
    """CPU seconds / GPU seconds of the same full-scale victim, and where the two numbers come from."""
    grid, dataset, attack = GPU_PAIR
    cells = {}
    for defense in ("none", "bedkd-fixed"):
        path = store.cell_dir(grid=grid, dataset=dataset, attack=attack, defense=defense, seed=0) / "report.json"
        if not path.is_file():
            return None
        report = json.loads(path.read_text())
        cells[defense] = (report["seconds"]["victim"], report["provenance"]["device"])
    (cpu, cpu_device), (gpu, gpu_device) = cells["none"], cells["bedkd-fixed"]
    if "cpu" not in cpu_device or "cpu" in gpu_device:
        return None
    return cpu / gpu, (f"{dataset.upper()} {attack} full-scale victim: {cpu:.0f} s on {cpu_device}, "
                       f"{gpu:.0f} s on {gpu_device}")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def times_markdown() -> str:
    """The guide's timing tables and their provenance, from results/benchmarks/."""
    run = next((r for r in map(_benchmark, CHAPTER_TIMES) if r), None)
    if run is None:
        return "No chapter timing has been measured yet (run `benchmarks/colab_sim.py --json ...`).\n"
    chapters = run["chapters"]
    setup = min(c["seconds"] for c in chapters.values())
    speedup = _gpu_speedup()
    lines = ["| chapter | quick scale, CPU (measured) | Colab T4 (estimate) |", "|---|---|---|"]
    for name, chapter in chapters.items():
        state = "" if chapter["ok"] else " (failed)"
        estimate = "—"
        if speedup:
            scale = T4_SLOWDOWN * COLAB_MODEL_COST / speedup[0]
            estimate = "≈ " + _minutes(setup + (chapter["seconds"] - setup) * scale)
        lines.append(f"| {name} | {_minutes(chapter['seconds'])}{state} | {estimate} |")
    prov = run["provenance"]
    lines += ["", f"Measured: each chapter's Colab copy run top to bottom in a fresh environment with an empty "
                  f"victim cache, as a student opening it alone; quick scale, {run['backbone']}, "
                  f"{prov['device']}, commit {prov['git_commit'][:12]}, "
                  f"{prov['date'][:10]}."]
    if speedup:
        lines += ["", f"Estimated, not measured: the T4 column keeps the shortest chapter's time as fixed setup "
                      f"and divides the rest by the speed-up of the one victim this book trained on both kinds "
                      f"of machine ({speedup[1]}: {speedup[0]:.0f}×), times an assumed slowdown of "
                      f"{T4_SLOWDOWN:.0f}× for a T4 against that GPU and {COLAB_MODEL_COST:.0f}× for "
                      f"bert-base-uncased, the model Colab runs, against MiniLM (layers × width²)."]
    else:
        lines += ["", "No T4 estimate: it needs one full-scale victim whose training time is stored for both a "
                      "CPU and a GPU (the `none` and `bedkd-fixed` cells of "
                      f"{'/'.join(GPU_PAIR)}), and the stored cells do not have that pair."]
    assignments = _benchmark(ASSIGNMENT_TIMES)
    if assignments:
        lines += ["", "| assignment | questions | points | solution run | grading one submission |",
                  "|---|---|---|---|---|"]
        for name, item in assignments["assignments"].items():
            lines.append(f"| {name} | {item['questions']} | {item['points']:g} | {_minutes(item['solution_seconds'])}"
                         f" | {_minutes(item['grade_seconds'])} |")
        prov = assignments["provenance"]
        lines += ["", f"Measured on {prov['device']}, commit {prov['git_commit'][:12]}, {prov['date'][:10]}: the "
                      f"solution notebook run with its tests, and `bedkd grade` on that solution as a submission."]
    return "\n".join(lines) + "\n"


def write_guide_times(*, guide: Path = GUIDE, check: bool = False) -> bool:
    """Rewrite the guide's timing block; True if it was (or, with check, would be) changed."""
    text = guide.read_text()
    start, end = GUIDE_MARKERS
    if start not in text or end not in text:
        raise DataError(f"{guide}: no timing block; add the lines {start!r} and {end!r} where it goes")
    before, rest = text.split(start, 1)
    new = f"{before}{start}\n{times_markdown()}{end}{rest.split(end, 1)[1]}"
    if new != text and not check:
        with store.atomic_file(guide) as handle:
            handle.write(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bedkd_core.course", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the guide is stale")
    args = parser.parse_args(argv)
    changed = write_guide_times(check=args.check)
    if args.check and changed:
        print(f"{GUIDE}: timing block is stale; run `python -m bedkd_core.course`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
