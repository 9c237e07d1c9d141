"""The graded assignments as students get them: in sync with their masters, runnable in Colab, no solutions.

The slow test runs each student notebook in a Jupyter kernel twice, as a student would: with the stubs
(every public test fails) and with the master's solutions put in place of the stubs (every public test passes).
"""
import ast
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

from bedkd_core.grading import public_tests
from bedkd_core.grading.assign import ASSIGNMENTS, INIT_CELL, SETUP_CELL, masters, stale

STUDENT = ASSIGNMENTS / "student"


def _code(notebook) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def _questions(master: Path) -> list[str]:
    cells = json.loads(master.read_text())["cells"]
    return [re.search(r"name:\s*(\w+)", "".join(c["source"])).group(1) for c in cells
            if c["cell_type"] == "raw" and "".join(c["source"]).startswith("# BEGIN QUESTION")]


def test_every_chapter_from_3_has_at_least_two_graded_questions():
    found = masters()
    assert sorted(found) == [3, 4, 5, 6]
    for master in found.values():
        assert len(_questions(master)) >= 2, master.name


def test_the_student_copies_and_their_public_tests_match_the_masters():
    assert stale() == [], "run `bedkd assign` and commit assignments/student/"


@pytest.mark.parametrize("master", sorted(masters().values()), ids=lambda p: p.stem)
def test_a_student_copy_starts_with_setup_then_otter_and_carries_no_solution(master):
    student = json.loads((STUDENT / master.name).read_text())
    badge = "".join(student["cells"][0]["source"])
    assert f"colab.research.google.com/github/bedkd-book/bedkd-book/blob/main/assignments/student/{master.name}" \
        in badge
    code = _code(student)
    assert code[0].strip() == SETUP_CELL.read_text().strip()
    assert code[1] == INIT_CELL.format(name=master.stem)
    text = json.dumps(student)
    assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text and "hidden_seed" not in text
    master_code = _code(json.loads(master.read_text()))
    for name in _questions(master):
        stub = next(c for c in code if re.search(rf"^def {name}\(", c, flags=re.M))
        body = ast.parse(stub).body[0].body
        assert isinstance(body[-1], ast.Raise), f"{name}: the student's stub must raise NotImplementedError"
        solution = next(c for c in master_code if re.search(rf"^def {name}\(", c, flags=re.M))
        solution_lines = {line.strip() for line in solution.splitlines() if len(line.strip()) > 25
                          and "BEGIN" not in line and "END" not in line and '"""' not in line}
        leaked = solution_lines & {line.strip() for line in "\n".join(code).splitlines()}
        leaked = {line for line in leaked if line not in stub}  # the docstring and signature are shared
        assert not leaked, f"{name}: solution lines in the student copy: {sorted(leaked)[:3]}"
        tests = Path(public_tests(master.stem)) / f"{name}.py"
        assert tests.is_file() and "hidden=True" not in tests.read_text()


def _solutions(master: Path, names: list[str]) -> dict[str, str]:
    """{graded name: the master's solution cell with otter's markers and prompt removed}."""
    out = {}
    for source in _code(json.loads(master.read_text())):
        for name in names:
            if re.search(rf"^def {name}\(", source, flags=re.M):
                source = re.sub(r'\n\s*""" # BEGIN PROMPT.*?""" # END PROMPT', "", source, flags=re.S)
                out[name] = "\n".join(line for line in source.splitlines()
                                      if not re.match(r"\s*# (BEGIN|END) SOLUTION", line))
    return out


def _run(notebook, folder: Path) -> list[str]:
    """Execute the notebook in `folder`; the text output of every grader.check cell."""
    from nbclient import NotebookClient

    env = {"BEDKD_SCALE": "quick", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return ["".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.outputs)
            for c in notebook.cells if c.cell_type == "code" and c.source.startswith("grader.check(")]


@pytest.mark.slow
@pytest.mark.parametrize("master", sorted(masters().values()), ids=lambda p: p.stem)
def test_public_tests_fail_on_the_stubs_and_pass_on_the_solutions(master, tmp_path):
    names = _questions(master)
    stubbed = _run(nbformat.read(STUDENT / master.name, as_version=4), tmp_path)
    assert len(stubbed) == len(names) and not any("passed" in out for out in stubbed), stubbed
    solved = nbformat.read(STUDENT / master.name, as_version=4)
    solutions = _solutions(master, names)
    for cell in solved.cells:
        for name, solution in solutions.items():
            if cell.cell_type == "code" and re.search(rf"^def {name}\(", cell.source, flags=re.M):
                cell.source = solution
    outputs = _run(solved, tmp_path)
    assert all("passed" in out for out in outputs), outputs
