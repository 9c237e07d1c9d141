"""Autograde the graded assignments of a chapter notebook: `bedkd grade NOTEBOOK [--json]`.

A graded assignment is a code cell tagged `assignment:<name>` (and `solution`) that defines one self-contained
top-level function `<name>`. The grader executes that cell alone in a fresh namespace, then runs the checker
registered for `<name>` in `CHECKERS`: it calls the function on real data (SST-2 and AG News sentences, labels,
and probabilities, logits and hidden states of the packaged MiniLM) and compares it with the reference in
bedkd_core. Every check gives points and feedback that says what went wrong. Broken cells, missing functions and
functions that raise score 0 with the reason; grading never prints a traceback.

Exit codes: 0 when grading ran (whatever the score), 2 when the notebook cannot be read.

`engine` holds the results, time limits, loading and the check registry; `notebook` reads and grades a notebook;
`fixtures` the shared real data; `checks_chNN` chapter NN's checks, registered on import (in chapter order);
`command` the command line. Patch the time limits where they are read: `grading.engine.CHECK_TIME_LIMIT`.
"""
from . import checks_ch03, checks_ch04, checks_ch05, checks_ch06  # importing them registers their checks
from .command import DESCRIPTION, add_command, main, run_command
from .engine import (CHECKERS, Check, Checker, CheckResult, ExerciseResult, GradeReport, GradingTimeout,
                     NotImplementedYet, StudentError, StudentFunction, check, checker, load_function, run_checks)
from .notebook import (EXPECTED, TAG_PREFIX, NotebookError, assignment_cells, cell_source, chapter_number,
                       grade_notebook, read_notebook)

__all__ = ["CHECKERS", "Check", "CheckResult", "Checker", "DESCRIPTION", "EXPECTED", "ExerciseResult", "GradeReport",
           "GradingTimeout", "NotImplementedYet", "NotebookError", "StudentError", "StudentFunction", "TAG_PREFIX",
           "add_command", "assignment_cells", "cell_source", "chapter_number", "check", "checker", "checks_ch03",
           "checks_ch04", "checks_ch05", "checks_ch06", "grade_notebook", "load_function", "main", "read_notebook",
           "run_checks", "run_command"]
