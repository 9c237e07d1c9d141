"""Student copies: solutions removed, stubs raise NotImplementedError, exercise text kept, outputs stripped,
deterministic files, and `bedkd student-copies --check` catches a stale student/ folder (CI runs it here).
When chapters carry graded assignments, their student copies grade to 0 with "not implemented"."""
import json
from pathlib import Path

import nbformat
import pytest

from bedkd_core import grading, student

REPO_ROOT = Path(__file__).resolve().parent.parent

SOLUTION_CODE = '''# Exercise 4.1: the directional mapping.
import random
from collections import Counter

HELPER_TABLE = {0: 1}


def flip_labels(labels: list[int],
                num_classes: int) -> list[int]:
    """Map each label y to (y + 1) mod K.

    Hint: a list comprehension is enough.
    """
    secret_step = [(int(y) + 1) % num_classes for y in labels]
    return secret_step


print(flip_labels([0, 1], 2))
'''

EXERCISE_MD = '''## Exercises

```{exercise} Flip the labels
:label: ex-flip

Implement `flip_labels` so that the DMM learns the flipped mapping.
```

````{solution} ex-flip
:class: dropdown

The answer is THE_SECRET_ANSWER:

```python
[(y + 1) % K for y in labels]
```
````

```{exercise} Another one
:label: ex-two

Explain why.
```
'''

GATED_START = "Before the gated solution.\n\n```{solution-start} ex-two\n:class: dropdown\n```\nGATED_SECRET text"
GATED_END = "more GATED_SECRET\n\n```{solution-end}\n```\n\nAfter the gated solution."


def chapter() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    run = nbformat.v4.new_code_cell("print('hello')", execution_count=3)
    run.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    run.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 4: the DMM"),
        run,
        nbformat.v4.new_markdown_cell(EXERCISE_MD),
        nbformat.v4.new_code_cell(SOLUTION_CODE, metadata={"tags": ["solution", "assignment:flip_labels"]}),
        nbformat.v4.new_code_cell("flip_labels([0, 1, 1], 2)"),
        nbformat.v4.new_markdown_cell(GATED_START),
        nbformat.v4.new_code_cell("GATED_SECRET = 42"),
        nbformat.v4.new_markdown_cell(GATED_END),
        nbformat.v4.new_markdown_cell("A whole solution cell: MD_SECRET", metadata={"tags": ["solution"]}),
    ]
    return nb


def text_of(nb) -> str:
    return "\n".join(grading.cell_source(c) for c in nb["cells"])


def test_solutions_are_removed_and_exercises_kept():
    original = chapter()
    before = json.dumps(original, sort_keys=True)
    copy = student.make_student_copy(original, source="chapters/04_dmm.ipynb")
    assert json.dumps(original, sort_keys=True) == before  # the chapter is not modified
    text = text_of(copy)
    for secret in ("secret_step", "THE_SECRET_ANSWER", "GATED_SECRET", "MD_SECRET", "HELPER_TABLE", "print(flip"):
        assert secret not in text, secret
    for kept in ("Implement `flip_labels` so that", "{exercise} Another one", "Explain why.", "# Chapter 4: the DMM",
                 "Before the gated solution.", "After the gated solution.", "flip_labels([0, 1, 1], 2)"):
        assert kept in text, kept
    stub = next(c for c in copy["cells"] if "assignment:flip_labels" in c["metadata"].get("tags", []))
    assert grading.cell_source(stub) == '''# Exercise 4.1: the directional mapping.
import random
from collections import Counter

def flip_labels(labels: list[int],
                num_classes: int) -> list[int]:
    """Map each label y to (y + 1) mod K.

    Hint: a list comprehension is enough.
    """
    raise NotImplementedError("Exercise: implement flip_labels")'''
    assert stub["metadata"]["tags"] == ["solution", "assignment:flip_labels"]  # still gradable


def test_outputs_execution_data_and_widget_state_are_stripped():
    copy = student.make_student_copy(chapter(), source="chapters/04_dmm.ipynb")
    code = [c for c in copy["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None and "execution" not in c["metadata"] for c in code)
    assert "widgets" not in copy["metadata"]
    assert copy["metadata"]["bedkd"] == {"student_copy": True, "source": "chapters/04_dmm.ipynb"}
    note = copy["cells"][1]
    assert note["cell_type"] == "markdown" and "Student copy" in note["source"]
    assert "bedkd grade student/04_dmm.ipynb" in note["source"]


def test_the_stub_raises_not_implemented_and_grades_zero(tmp_path):
    copy = student.make_student_copy(chapter(), source="chapters/04_dmm.ipynb")
    stub = next(c for c in copy["cells"] if "assignment:flip_labels" in c["metadata"].get("tags", []))
    namespace = {}
    exec(grading.cell_source(stub), namespace)
    with pytest.raises(NotImplementedError, match="Exercise: implement flip_labels"):
        namespace["flip_labels"]([0, 1], 2)
    path = tmp_path / "04_dmm.ipynb"
    path.write_text(student.render(copy))
    report = grading.grade_notebook(path)
    flip = report.exercise("flip_labels")
    assert (flip.status, flip.score) == ("not implemented", 0) and "not implemented" in flip.reason


def test_copies_are_deterministic_and_idempotent():
    nb = chapter()  # new_notebook draws random cell ids; the copy of one chapter is always the same
    first = student.render(student.make_student_copy(nb, source="x.ipynb"))
    again = student.render(student.make_student_copy(json.loads(json.dumps(nb)), source="x.ipynb"))
    assert first == again
    assert first == nbformat.writes(nbformat.reads(first, as_version=4)) + "\n"  # nbformat's own layout
    twice = student.make_student_copy(json.loads(first), source="x.ipynb")
    code_cells = lambda nb: [grading.cell_source(c) for c in nb["cells"] if c["cell_type"] == "code"]  # noqa: E731
    assert code_cells(twice) == code_cells(json.loads(first))


def test_stub_code_handles_one_liners_decorators_and_cells_without_functions():
    assert student.stub_code("def f(x): return {1: x}") == 'def f(x):\n    raise NotImplementedError("Exercise: implement f")'
    decorated = student.stub_code("import functools\n@functools.lru_cache\ndef g(y=lambda: 1):\n    return y\n")
    assert decorated == ('import functools\n\n@functools.lru_cache\ndef g(y=lambda: 1):\n'
                         '    raise NotImplementedError("Exercise: implement g")')
    assert student.stub_code("x = 1\nprint(x)\n") == "# Exercise: write your solution here"


def test_a_solution_cell_that_does_not_parse_names_the_cell():
    nb = chapter()
    nb.cells[3].source = "def flip_labels(:\n"
    with pytest.raises(student.StudentCopyError, match=r"04_dmm.ipynb: cell 3 .* does not parse"):
        student.make_student_copy(nb, source="chapters/04_dmm.ipynb")


def scratch_book(root: Path) -> Path:
    (root / "chapters").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: chapters/01_intro\nchapters:\n"
                                   "  - file: chapters/04_dmm\n# - file: chapters/05_akd\n")
    intro = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Intro")])
    nbformat.write(intro, root / "chapters" / "01_intro.ipynb")
    nbformat.write(chapter(), root / "chapters" / "04_dmm.ipynb")
    return root


def test_generate_and_check_detect_drift(tmp_path, capsys):
    root = scratch_book(tmp_path / "book")
    out = root / "student"
    assert student.main(["--root", str(root), "--check"]) == 1
    assert f"{out / '04_dmm.ipynb'}: missing" in capsys.readouterr().err
    assert student.main(["--root", str(root)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01_intro.ipynb", "04_dmm.ipynb"]
    capsys.readouterr()
    assert student.main(["--root", str(root), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out

    # the chapter changes: the copy is stale
    nb = nbformat.read(root / "chapters" / "04_dmm.ipynb", as_version=4)
    nb.cells[2].source += "\nA new exercise sentence.\n"
    nbformat.write(nb, root / "chapters" / "04_dmm.ipynb")
    (out / "07_orphan.ipynb").write_text("{}")
    assert student.main(["--root", str(root), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{out / '04_dmm.ipynb'}: differs from the student copy of its chapter" in err
    assert f"{out / '07_orphan.ipynb'}: no chapter of that name in _toc.yml" in err
    assert "01_intro" not in err
    assert student.main(["--root", str(root)]) == 0
    assert not (out / "07_orphan.ipynb").exists()
    assert student.stale_files(root=root) == []


def test_a_broken_chapter_exits_2(tmp_path, capsys):
    root = scratch_book(tmp_path / "book")
    (root / "chapters" / "04_dmm.ipynb").write_text("{not json")
    assert student.main(["--root", str(root)]) == 2
    assert "04_dmm.ipynb: cannot read the notebook" in capsys.readouterr().err


def test_the_bedkd_command_writes_student_copies(tmp_path, capsys):
    from bedkd_core import cli

    root = scratch_book(tmp_path / "book")
    assert cli.main(["student-copies", "--root", str(root), "--check"]) == 1
    assert cli.main(["student-copies", "--root", str(root), "--out", str(tmp_path / "copies")]) == 0
    assert (tmp_path / "copies" / "04_dmm.ipynb").is_file()


def test_the_committed_student_copies_are_up_to_date():
    problems = student.stale_files(root=REPO_ROOT)
    assert not problems, "student/ is stale; run `bedkd student-copies`:\n" + "\n".join(problems)


def graded_chapters() -> list[Path]:
    """Chapter notebooks (on disk, in the toc or not yet) that carry assignment cells."""
    found = []
    for path in sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        try:
            if grading.assignment_cells(grading.read_notebook(path)):
                found.append(path)
        except grading.NotebookError:
            pass
    return found


GRADED_CHAPTERS = graded_chapters()


def test_chapters_carry_graded_assignments():
    assert GRADED_CHAPTERS, "no chapter carries assignment cells"


@pytest.mark.parametrize("chapter_path", GRADED_CHAPTERS, ids=lambda p: p.name)
def test_student_copies_of_the_chapters_grade_zero_as_not_implemented(chapter_path, tmp_path, capsys):
    nb = json.loads(chapter_path.read_text())
    copy = tmp_path / chapter_path.name
    copy.write_text(student.render(student.make_student_copy(nb, source=f"chapters/{chapter_path.name}")))
    assert grading.main([str(copy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exercises"] and report["score"] == 0 and report["max_score"] > 0
    for exercise in report["exercises"]:
        assert exercise["status"] == "not implemented" and "not implemented" in exercise["reason"], exercise
    # the solution code is gone: no line of a solution function's body survives in the copy
    copied = grading.assignment_cells(json.loads(copy.read_text()))
    for name, cells in grading.assignment_cells(nb).items():
        stub = grading.cell_source(copied[name][-1][1])
        assert f'raise NotImplementedError("Exercise: implement {name}")' in stub
        assert not any(line.strip().startswith("return") for line in stub.splitlines()), stub
