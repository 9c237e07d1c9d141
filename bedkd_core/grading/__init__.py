"""Graded assignments: otter-grader masters (assignments/chNN_*.ipynb), `bedkd assign` and `bedkd grade`.

`assign` runs `otter assign` on the masters (dist/chNN/ with the autograder zip; assignments/student/);
`grader` runs each question's otter test file in this process with proxies for the graded functions;
`runner` and `sandbox` run the student's code in its own process (rlimits, a wall-clock kill, an audit hook
that refuses bedkd_core, otter, processes, sockets and files outside its scratch folder); `wire` is their
pickle-free message format; `fixtures` the tests' real data; `calls` one gradient test for notebook and grader.
Nothing heavy is imported here: the sandbox child imports this package before it locks itself down.
"""
from pathlib import Path

from .command import DESCRIPTION, add_assign_command, add_command, main, run_command


def public_tests(name: str) -> str:
    """The folder of assignment `name`'s public test files (e.g. "ch06_baselines"), which students run."""
    return str(Path(__file__).resolve().parents[2] / "assignments" / "student" / "tests" / name)


__all__ = ["DESCRIPTION", "add_assign_command", "add_command", "main", "public_tests", "run_command"]
