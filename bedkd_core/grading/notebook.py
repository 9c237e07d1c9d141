"""Reading a notebook and grading its assignment cells: each cell tagged `assignment:<name>` is loaded on its own
and its function run through the checks registered for `<name>`."""
from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

from .engine import CHECKERS, ExerciseResult, GradeReport, ipython_to_python, load_function, run_checks

TAG_PREFIX = "assignment:"
EXPECTED = {
    3: ["insert_trigger"],
    4: ["flip_labels", "agreement_score"],
    5: ["punish_loss"],
    6: ["threshold_at_frr"],
}
"""The assignments each chapter (by its number NN in NN_name.ipynb) must carry; missing ones score 0."""


class NotebookError(ValueError):
    """The notebook cannot be read: not a file, not JSON, not a notebook."""


# ---------------------------------------------------------------- reading a notebook

def read_notebook(path: str | Path) -> dict:
    """The notebook as a dict; NotebookError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise NotebookError(f"{path}: no such file")
    if not path.is_file():
        raise NotebookError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise NotebookError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as err:
        raise NotebookError(f"{path}: not a notebook (invalid JSON at line {err.lineno}, column {err.colno}: "
                            f"{err.msg})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path}: not a Jupyter notebook (no list of `cells`)")
    if nb.get("nbformat") != 4:
        raise NotebookError(f"{path}: nbformat {nb.get('nbformat')!r} is not supported (expected 4)")
    return nb


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def assignment_cells(nb: dict) -> dict[str, list[tuple[int, dict]]]:
    """assignment name → [(cell index, cell)] for every cell tagged `assignment:<name>`, in notebook order."""
    found: dict[str, list[tuple[int, dict]]] = {}
    for index, cell in enumerate(nb["cells"]):
        tags = (cell.get("metadata") or {}).get("tags") or []
        for tag in tags:
            if isinstance(tag, str) and tag.startswith(TAG_PREFIX):
                found.setdefault(tag[len(TAG_PREFIX):].strip(), []).append((index, cell))
    return found


def chapter_number(path: str | Path) -> int | None:
    match = re.match(r"(\d+)_", Path(path).name)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------- grading

def grade_notebook(path: str | Path, *, expected: list[str] | None = None) -> GradeReport:
    """Grade every assignment cell of a notebook; NotebookError when it cannot be read.

    `expected`: the assignments the notebook must hold (default: by its chapter number, see `EXPECTED`);
    those without a cell score 0.
    """
    start = time.perf_counter()
    nb = read_notebook(path)
    cells = assignment_cells(nb)
    if expected is None:
        expected = EXPECTED.get(chapter_number(path) or -1, [])
    names = list(dict.fromkeys([*expected, *cells]))
    report = GradeReport(notebook=str(path), exercises=[])
    if not names:
        report.notes.append(f"no graded assignments: no cell is tagged `{TAG_PREFIX}<name>` "
                            f"(graded names: {', '.join(CHECKERS)})")
    for name in names:
        ex_start = time.perf_counter()
        report.exercises.append(_grade_one(name, cells.get(name, [])))
        report.exercises[-1].seconds = time.perf_counter() - ex_start
    report.seconds = time.perf_counter() - start
    return report


def _grade_one(name: str, cells: list[tuple[int, dict]]) -> ExerciseResult:
    if name not in CHECKERS:
        return ExerciseResult(name=name, status="no checker",
                              reason=f"{name}: no checker is registered for `{TAG_PREFIX}{name}` "
                                     f"(graded names: {', '.join(CHECKERS)}); not graded")
    max_points = CHECKERS[name].max_points
    if not cells:
        return ExerciseResult(name=name, status="missing", max_points=max_points,
                              reason=f"{name}: no cell tagged `{TAG_PREFIX}{name}` in the notebook "
                                     f"(expected a code cell defining {CHECKERS[name].signature})")
    index, cell = cells[-1]
    label = f"cell {index}" + (f" (the last of {len(cells)} cells tagged {TAG_PREFIX}{name})" if len(cells) > 1 else "")
    if cell.get("cell_type") != "code":
        return ExerciseResult(name=name, status="error", max_points=max_points,
                              reason=f"{name}: {label} is a {cell.get('cell_type')} cell, not a code cell")
    fn, why = load_function(cell_source(cell), name, label=label)
    if fn is None:
        status = "not implemented" if "not implemented" in why else "error"
        return ExerciseResult(name=name, status=status, max_points=max_points, reason=f"{name}: {why}")
    if _is_stub(cell_source(cell), name):  # spare loading the data and MiniLM for a student copy's stub
        return ExerciseResult(name=name, status="not implemented", max_points=max_points,
                              reason=f"{name}: not implemented (its body only raises NotImplementedError)")
    return run_checks(name, fn)


def _is_stub(source: str, name: str) -> bool:
    """Whether `name`'s body is only a docstring and `raise NotImplementedError(...)`, as in a student copy."""
    try:
        tree = ast.parse(ipython_to_python(source))
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            body = node.body[1:] if (isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                                     and isinstance(node.body[0].value.value, str)) else node.body
            if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
                return False
            exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False
