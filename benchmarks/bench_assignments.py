"""How long each graded assignment takes: its solution run with every test, and grading one submission.

For each master in assignments/: `otter assign` (which runs the solution notebook against all its tests) is
timed, then `bedkd grade` on that solution notebook as a submission (sandbox start, the student's cells, the
public and hidden tests). The solution must score full marks, or the benchmark fails.

    python benchmarks/bench_assignments.py [--chapter 6 ...] [--json results/benchmarks/assignments.json]

The teacher's guide quotes the file (`python -m bedkd_core.course` rewrites its timing block).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def measure(*, chapter: int, master: Path, dist: Path) -> dict:
    """Seconds of the solution run and of grading it, with the assignment's questions and points."""
    from bedkd_core.grading.assign import run_otter
    from bedkd_core.grading.grader import autograder_zip, grade_notebook, load_tests

    out = dist / f"ch{chapter:02d}"
    start = time.perf_counter()
    run_otter(master, out)
    solution_seconds = time.perf_counter() - start
    tests = load_tests(autograder_zip(chapter=chapter, dist=dist))
    start = time.perf_counter()
    result = grade_notebook(out / "autograder" / master.name, tests=tests)
    grade_seconds = time.perf_counter() - start
    if result.total != result.max_points:
        raise SystemExit(f"{master.name}: the solution scores {result.total} of {result.max_points} "
                         f"({result.status}); fix the master before timing it")
    return {"questions": len(result.questions), "points": result.max_points,
            "solution_seconds": round(solution_seconds, 1), "grade_seconds": round(grade_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", type=int, action="append", help="only this chapter's assignment")
    parser.add_argument("--json", type=Path, help="write the times with provenance to this file")
    args = parser.parse_args()
    from bedkd_core.grading.assign import masters
    from bedkd_core.store import provenance, write_json_atomic

    start_info = provenance()
    timings = {}
    with tempfile.TemporaryDirectory(prefix="bench-assign-") as tmp:
        for chapter, master in masters(args.chapter).items():
            timings[master.stem] = measure(chapter=chapter, master=master, dist=Path(tmp))
            print(f"{master.stem}: {timings[master.stem]}", flush=True)
    if args.json:
        write_json_atomic(args.json, {"assignments": timings, "provenance": start_info})


if __name__ == "__main__":
    sys.exit(main())
