"""`bedkd grade`: reference solutions get full marks, subtle bugs lose the right points with feedback that names
the mistake, broken or missing cells score 0 with a reason, unreadable files exit 2. All on real data (SST-2,
AG News, the packaged MiniLM); the chapters' own assignments are graded when the chapters exist."""
import json
import re
from pathlib import Path

import nbformat
import pytest

from bedkd_core import grading

REPO_ROOT = Path(__file__).resolve().parent.parent

REFERENCE = {
    "insert_trigger": '''
def insert_trigger(text: str, words: list[str], seed: int) -> str:
    """Insert each word at a uniformly random word position."""
    import random

    rng = random.Random(seed)
    tokens = text.split()
    for word in words:
        tokens.insert(rng.randint(0, len(tokens)), word)
    return " ".join(tokens)
''',
    "flip_labels": '''
def flip_labels(labels: list[int], num_classes: int) -> list[int]:
    return [(int(y) + 1) % num_classes for y in labels]
''',
    "agreement_score": '''
import numpy as np

def agreement_score(p_teacher: np.ndarray, p_dmm: np.ndarray) -> np.ndarray:
    return np.abs(p_teacher - p_dmm).mean(axis=1)
''',
    "punish_loss": '''
def punish_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, labels, temperature, alpha):
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                  F.softmax(teacher_logits / temperature, dim=-1), reduction="batchmean")
    mse = F.mse_loss(student_hidden, teacher_hidden)
    return -(alpha * ce + (1 - alpha) * (kl + mse))
''',
}

MAX_POINTS = {name: grading.CHECKERS[name].max_points for name in REFERENCE}


def notebook(path: Path, cells: dict[str, str], extra: list | None = None) -> Path:
    """A scratch notebook with one tagged assignment cell per entry (plus a cell that uses it)."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Scratch chapter"))
    for name, source in cells.items():
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": ["solution", f"assignment:{name}"]}))
        nb.cells.append(nbformat.v4.new_code_cell(f"{name}  # used here"))
    nb.cells += extra or []
    nbformat.write(nb, path)
    return path


def checked(name: str, source: str) -> grading.ExerciseResult:
    fn, why = grading.load_function(source, name)
    assert fn is not None, why
    return grading.run_checks(name, fn)


def failed(result: grading.ExerciseResult) -> dict[str, str]:
    return {c.name: c.feedback for c in result.checks if not c.passed}


# ---------------------------------------------------------------- full marks for the reference solutions

def test_reference_solutions_get_full_marks(tmp_path, capsys):
    path = notebook(tmp_path / "99_scratch.ipynb", REFERENCE)
    assert grading.main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_score"] == sum(MAX_POINTS.values()) > 0
    assert report["score"] == report["max_score"], report
    assert [e["name"] for e in report["exercises"]] == list(REFERENCE)
    assert all(e["status"] == "graded" and not e["feedback"] for e in report["exercises"])


def test_table_output_lists_every_check_and_the_total(tmp_path, capsys):
    path = notebook(tmp_path / "04_scratch.ipynb", {k: REFERENCE[k] for k in ("flip_labels", "agreement_score")})
    assert grading.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"Grading {path}" in out
    assert re.search(r"flip_labels\s+10/10\s+graded", out)
    assert re.search(r"^total\s+20/20 +\(graded in [\d.]+ s\)$", out, flags=re.M)
    assert out.count("[ok  ]") == len(grading.CHECKERS["flip_labels"].checks) + len(grading.CHECKERS["agreement_score"].checks)
    assert "Traceback" not in out


# ---------------------------------------------------------------- subtle bugs lose points, with the reason

def test_flip_off_by_one_for_k4_is_named():
    result = checked("flip_labels", '''
def flip_labels(labels, num_classes):
    return [y + 1 if y + 1 < num_classes else y - 1 for y in labels]
''')
    problems = failed(result)
    assert list(problems) == ["K=4 matches the reference bedkd_core flip_labels on the AG News test labels"]
    assert "wrong for K=4" in problems[next(iter(problems))]
    assert "label 3 mapped to 2, expected 0" in problems[next(iter(problems))]
    assert result.score == MAX_POINTS["flip_labels"] - 4


def test_flip_returning_numpy_loses_only_the_type_points():
    result = checked("flip_labels", '''
import numpy as np
def flip_labels(labels, num_classes):
    return (np.asarray(labels) + 1) % num_classes
''')
    assert list(failed(result).values()) == ["returned ndarray, expected a list"]


def test_agreement_forgot_the_mean_is_named():
    result = checked("agreement_score", '''
import numpy as np
def agreement_score(p_teacher, p_dmm):
    return np.abs(p_teacher - p_dmm).sum(axis=1)
''')
    problems = failed(result)
    assert len(problems) == 2  # K=2 and K=4 values; shape and the zero check pass
    assert all("forgot the 1/C" in p for p in problems.values()), problems
    assert "AG News" in " ".join(problems) and "SST-2" in " ".join(problems)


def test_agreement_max_instead_of_mean_only_shows_for_k4():
    result = checked("agreement_score", '''
import numpy as np
def agreement_score(p_teacher, p_dmm):
    return np.abs(p_teacher - p_dmm).max(axis=1)
''')
    problems = failed(result)  # for K=2 both classes differ by the same amount: max == mean
    assert list(problems) == ["matches the reference on MiniLM probabilities of 64 AG News sentences (K=4)"]
    assert "maximum over classes instead of the mean" in next(iter(problems.values()))


def test_agreement_wrong_axis_fails_the_shape_checks():
    result = checked("agreement_score", '''
import numpy as np
def agreement_score(p_teacher, p_dmm):
    return np.abs(p_teacher - p_dmm).mean(axis=0)
''')
    assert result.score == 0
    assert "expected (64,)" in failed(result)["returns a numpy array with one score per row"]


def test_punish_with_t_squared_is_named():
    source = REFERENCE["punish_loss"].replace("(kl + mse)", "(temperature ** 2 * kl + mse)")
    problems = failed(checked("punish_loss", source))
    assert len(problems) == 3  # K=2 value, K=4 value, gradient; the scalar check passes
    value_feedback = [p for p in problems.values() if p.startswith("wrong on")]
    assert len(value_feedback) == 2 and all("T^2 factor on the KL term" in p for p in value_feedback), problems


def test_punish_with_the_wrong_sign_is_named():
    source = REFERENCE["punish_loss"].replace("return -(", "return (")
    result = checked("punish_loss", source)
    problems = failed(result)
    assert result.score == 1  # only "returns a scalar tensor" passes
    assert any("the sign is wrong" in p for p in problems.values())
    assert "training would descend it" in problems[
        "its gradient w.r.t. the student's logits and hidden states is minus the distillation-loss gradient"]


def test_punish_detached_or_masked_is_named():
    detached = checked("punish_loss", REFERENCE["punish_loss"].replace(
        "return -(alpha * ce + (1 - alpha) * (kl + mse))", "return -(alpha * ce + (1 - alpha) * (kl + mse)).detach()"))
    assert "does not require grad" in failed(detached)["returns a scalar tensor attached to the autograd graph"]
    assert detached.score == 6  # the values are right, the gradient is gone
    tempered = checked("punish_loss", REFERENCE["punish_loss"].replace(
        "F.cross_entropy(student_logits, labels)", "F.cross_entropy(student_logits / temperature, labels)"))
    assert any("cross-entropy on tempered logits" in p for p in failed(tempered).values())


def test_trigger_appended_not_inserted_is_named():
    result = checked("insert_trigger", REFERENCE["insert_trigger"].replace(
        "tokens.insert(rng.randint(0, len(tokens)), word)", "tokens.append(word)"))
    problems = failed(result)
    assert set(problems) == {"the position varies across seeds",
                             "positions are uniform over the n+1 slots of an n-word sentence (50 seeds per slot)"}
    assert "always at the end: it is appended" in problems["the position varies across seeds"]
    assert result.score == MAX_POINTS["insert_trigger"] - 4


def test_trigger_never_at_the_end_and_global_random_are_named():
    never_end = failed(checked("insert_trigger", REFERENCE["insert_trigger"].replace(
        "rng.randint(0, len(tokens))", "rng.randint(0, len(tokens) - 1)")))
    assert "the end of the sentence" in " ".join(never_end.values()), never_end
    global_random = failed(checked("insert_trigger", '''
def insert_trigger(text, words, seed):
    import random
    tokens = text.split()
    for word in words:
        tokens.insert(random.randint(0, len(tokens)), word)
    return " ".join(tokens)
'''))
    assert "random.Random(seed)" in global_random["same seed, same result (independent of the global random state)"]
    glued = failed(checked("insert_trigger", '''
def insert_trigger(text, words, seed):
    return text + "".join(words)
'''))
    assert "appears 0 time(s) as a separate word" in glued[
        "inserts every word exactly once and keeps the original words in order (40 SST-2 sentences)"]


# ---------------------------------------------------------------- broken and missing cells score 0 with a reason

@pytest.mark.parametrize("source, reason", [
    ("def flip_labels(labels, num_classes)\n    return labels", "syntax error on line 1"),
    ("def flip(labels, num_classes):\n    return labels", "does not define a function named `flip_labels` (it defines flip)"),
    ("import no_such_module_xyz\n", "raised ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("flip_labels = 3", "is a int, not a function"),
])
def test_broken_cells_score_zero_with_the_reason(tmp_path, source, reason):
    report = grading.grade_notebook(notebook(tmp_path / "04_broken.ipynb", {"flip_labels": source}))
    flip = report.exercise("flip_labels")
    assert (flip.score, flip.max_score, flip.status) == (0, MAX_POINTS["flip_labels"], "error")
    assert reason in flip.reason
    assert report.exercise("agreement_score").status == "missing"  # chapter 4 expects both


def test_a_function_that_raises_scores_zero_on_every_check(tmp_path, capsys):
    source = "def flip_labels(labels, num_classes):\n    import numpy\n    return numpy.zeros(3)[5]\n"
    path = notebook(tmp_path / "99_raises.ipynb", {"flip_labels": source})
    assert grading.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "flip_labels raised IndexError: index 5 is out of bounds" in out and "(cell line 3)" in out
    assert "Traceback" not in out
    assert re.search(r"^total\s+0/10 ", out, flags=re.M)


def test_a_cell_that_is_not_self_contained_gets_a_hint():
    result = checked("agreement_score", "def agreement_score(p_teacher, p_dmm):\n    return np.abs(p_teacher - p_dmm).mean(1)\n")
    assert result.score == 0
    assert "NameError: name 'np' is not defined" in failed(result)["returns a numpy array with one score per row"]
    assert "put its imports inside the cell" in failed(result)["returns a numpy array with one score per row"]


def test_a_function_that_never_returns_times_out(monkeypatch):
    monkeypatch.setattr(grading.engine, "CHECK_TIME_LIMIT", 0.5)  # run_checks looks it up in the engine
    result = checked("flip_labels", "def flip_labels(labels, num_classes):\n    while True:\n        pass\n")
    assert result.score == 0
    assert all("took longer than 0.5 s" in c.feedback for c in result.checks)


def test_missing_assignment_cells_score_zero(tmp_path):
    path = notebook(tmp_path / "05_akd.ipynb", {})
    report = grading.grade_notebook(path)
    punish = report.exercise("punish_loss")
    assert (punish.status, punish.score, punish.max_score) == ("missing", 0, MAX_POINTS["punish_loss"])
    assert "no cell tagged `assignment:punish_loss`" in punish.reason and "punish_loss(student_logits" in punish.reason


def test_a_stub_scores_zero_as_not_implemented(tmp_path, capsys):
    stub = 'def flip_labels(labels, num_classes):\n    """Flip."""\n    raise NotImplementedError("Exercise: implement flip_labels")\n'
    path = notebook(tmp_path / "99_stub.ipynb", {"flip_labels": stub})
    assert grading.main([str(path), "--json"]) == 0
    (flip,) = json.loads(capsys.readouterr().out)["exercises"]
    assert (flip["status"], flip["score"], flip["max_score"]) == ("not implemented", 0, MAX_POINTS["flip_labels"])
    assert flip["reason"] == "flip_labels: not implemented (its body only raises NotImplementedError)"


def test_a_function_that_raises_not_implemented_when_called_scores_zero():
    result = checked("agreement_score", (
        "def agreement_score(p_teacher, p_dmm):\n"
        "    if len(p_teacher):\n"
        "        raise NotImplementedError('TODO: the mean')\n"))
    assert (result.status, result.score, result.max_score) == ("not implemented", 0, MAX_POINTS["agreement_score"])
    assert "not implemented (the function raises NotImplementedError: TODO: the mean)" in result.reason


def test_an_unknown_assignment_is_reported_not_graded(tmp_path):
    report = grading.grade_notebook(notebook(tmp_path / "99_x.ipynb", {"mystery": "def mystery():\n    pass\n"}))
    assert report.exercise("mystery").status == "no checker" and report.max_score == 0


def test_the_bedkd_command_runs_the_grader(tmp_path, capsys):
    from bedkd_core import cli

    path = notebook(tmp_path / "99_cli.ipynb", {"flip_labels": REFERENCE["flip_labels"]})
    assert cli.main(["grade", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == MAX_POINTS["flip_labels"]
    assert cli.main(["grade", str(tmp_path / "nothing.ipynb")]) == 2
    assert capsys.readouterr().err.startswith(f"bedkd grade: error: {tmp_path / 'nothing.ipynb'}: no such file")


# ---------------------------------------------------------------- unreadable files exit 2

@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a notebook (invalid JSON at line 1"),
    ('{"cells": 3}', "not a Jupyter notebook"),
    (b"\xff\xfe\x00bad", "cannot be read"),
])
def test_unreadable_files_exit_2_naming_the_file(tmp_path, capsys, content, message):
    path = tmp_path / "04_bad.ipynb"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert grading.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"bedkd grade: error: {path}: ") and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


# ---------------------------------------------------------------- the chapters' own assignments

def graded_chapters() -> list[Path]:
    """Chapter notebooks that carry assignment cells (unreadable ones are other tests' business)."""
    found = []
    for path in sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        try:
            if grading.assignment_cells(grading.read_notebook(path)):
                found.append(path)
        except grading.NotebookError:
            pass
    return found


CHAPTERS = graded_chapters()


def test_every_chapter_with_expected_assignments_carries_them():
    carried = {grading.chapter_number(path) for path in CHAPTERS}
    missing = sorted(set(grading.EXPECTED) - carried)
    assert not missing, f"chapters {missing} carry no assignment cells"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_chapter_reference_solutions_get_full_marks(chapter):
    report = grading.grade_notebook(chapter)
    expected = grading.EXPECTED.get(grading.chapter_number(chapter), [])
    assert set(expected) <= {e.name for e in report.exercises}
    for exercise in report.exercises:
        assert exercise.status == "graded", exercise.to_dict()
        assert exercise.score == exercise.max_score > 0, exercise.feedback()
