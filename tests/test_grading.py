"""`bedkd grade`: full marks for a correct submission, 0 with a reason for a stub, and every probed cheat fails.

The slow tests build chapter 6's autograder with `otter assign` once, then grade one class folder of synthetic
submissions (the student copy with its stubs filled in) and check each row; the fast ones cover the wire format,
which cells run, gradients through the proxy and the command's errors.
"""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bedkd_core import cli
from bedkd_core.grading import grader, wire
from bedkd_core.grading.runner import Limits, graded_cells

REPO_ROOT = Path(__file__).resolve().parent.parent
STUDENT = REPO_ROOT / "assignments" / "student" / "ch06_baselines.ipynb"
OUTSIDE = Path("/tmp/bedkd-grading-cheat.txt")

SOLUTIONS = {
    "strip_entropy": '''def strip_entropy(*, probs):
    import numpy as np
    p = np.asarray(probs, dtype=float)
    return (-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)).mean(axis=-1)
''',
    "threshold_at_frr": '''def threshold_at_frr(*, scores, frr):
    import numpy as np
    o = np.sort(np.asarray(scores, dtype=float))
    k = int(np.floor(frr * len(o)))
    return float(o[k]) if k < len(o) else float("inf")
'''}
HANG = '''import time
def threshold_at_frr(*, scores, frr):
    while True:
        try:
            time.sleep(100)
        except BaseException:
            pass
'''
CLASS = {
    "correct": SOLUTIONS,
    "stub": {},
    "import_reference": {**SOLUTIONS, "threshold_at_frr": "from bedkd_core.defenses.strip import threshold_at_frr\n"},
    "patch_grader": {**SOLUTIONS, "strip_entropy": "import bedkd_core.grading as g\ng.CHECKERS = {}\n"
                     "def strip_entropy(*, probs):\n    return [0.0]\n"},
    "hang_in_function": {**SOLUTIONS, "threshold_at_frr": HANG},
    "hang_at_top_level": {**SOLUTIONS, "threshold_at_frr": "import time\ndef threshold_at_frr(*, scores, frr):\n"
                          "    return 0.0\nwhile True:\n    try:\n        time.sleep(100)\n"
                          "    except BaseException:\n        pass\n"},
    "write_outside": {**SOLUTIONS, "threshold_at_frr": SOLUTIONS["threshold_at_frr"].replace(
        "    import numpy as np\n", f"    open({str(OUTSIDE)!r}, 'w').write('x')\n    import numpy as np\n", 1)},
    "read_key": {**SOLUTIONS, "strip_entropy": "def strip_entropy(*, probs):\n"
                 f"    open({str(REPO_ROOT / 'assignments' / 'ch06_baselines.ipynb')!r}, 'rb').read()\n"
                 "    return 0\n"},
    "memory_bomb": {**SOLUTIONS, "strip_entropy": "def strip_entropy(*, probs):\n    import numpy as np\n"
                    "    return np.ones((1 << 34,))[:1]\n"},
    "start_process": {**SOLUTIONS, "strip_entropy": "def strip_entropy(*, probs):\n    import os\n"
                      "    os.system('true')\n    return 0\n"},
}


def submission(path: Path, bodies: dict) -> Path:
    """The student copy with the cells of `bodies` (function name → cell source) filled in."""
    nb = json.loads(STUDENT.read_text())
    for cell in nb["cells"]:
        for name, body in bodies.items():
            if cell["cell_type"] == "code" and "".join(cell["source"]).startswith(f"def {name}("):
                cell["source"] = body
    path.write_text(json.dumps(nb, indent=1))
    return path


# ---------------------------------------------------------------- fast

def test_wire_round_trip_keeps_types_and_refuses_objects():
    value = {"a": [1, 2.5, None, True, "s"], "t": (np.float64(0.5), np.arange(3)),
             "x": torch.ones(2, requires_grad=True)}
    back = wire.decode(*wire.encode(value))
    assert back["a"] == [1, 2.5, None, True, "s"] and isinstance(back["t"], tuple)
    assert type(back["t"][0]) is np.float64 and np.array_equal(back["t"][1], np.arange(3))
    assert isinstance(back["x"], torch.Tensor) and back["x"].requires_grad
    with pytest.raises(wire.WireError):
        wire.encode(object())
    with pytest.raises(wire.WireError):
        wire.encode(np.array([object()]))


def test_only_the_last_definition_cells_run_and_magics_are_dropped():
    cells, broken = graded_cells(["def f():\n    return 1\n", "%time x = 1\ndef f():\n    return 2\n",
                                  "def g(:\n", "print('not graded')\n"], ["f", "g"])
    assert [(i, names) for i, _, names in cells] == [(1, ["f"])] and broken == 1
    assert "%time" not in cells[0][1]


def test_missing_autograder_and_unreadable_notebook_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["grade", "--chapter", "6", "--dist", str(tmp_path), str(tmp_path)]) == 2
    assert "run `bedkd assign --chapter 6`" in capsys.readouterr().err
    zip_dir = tmp_path / "ch06" / "autograder"
    zip_dir.mkdir(parents=True)
    with zipfile.ZipFile(zip_dir / "a.zip", "w") as archive:
        archive.writestr("tests/double.py", "from otter.test_files import test_case\nOK_FORMAT = False\n"
                         "name = 'double'\npoints = 1\n@test_case(points=1)\ndef t(double):\n"
                         "    assert double(x=2) == 4\n")
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    assert cli.main(["grade", "--chapter", "6", "--dist", str(tmp_path), str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and err.count("\n") == 1


@pytest.mark.slow
def test_gradients_cross_the_sandbox(tmp_path):
    zip_dir = tmp_path / "ch09" / "autograder"
    zip_dir.mkdir(parents=True)
    with zipfile.ZipFile(zip_dir / "a.zip", "w") as archive:
        archive.writestr("tests/square_sum.py", "from otter.test_files import test_case\nOK_FORMAT = False\n"
                         "name = 'square_sum'\npoints = 1\n@test_case(points=1)\ndef t(square_sum):\n"
                         "    import torch\n    from bedkd_core.grading.calls import value_and_grad\n"
                         "    x = torch.tensor([1.0, -2.0])\n"
                         "    value, grads = value_and_grad(square_sum, wrt=('x',), x=x)\n"
                         "    assert float(value) == 5.0 and torch.allclose(grads['x'], 2 * x)\n")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "def square_sum(*, x):\n    return (x * x).sum()\n"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "s.ipynb").write_text(json.dumps(nb))
    [result] = grader.grade_all([tmp_path / "s.ipynb"], chapter=9, dist=tmp_path)
    assert result.total == 1.0, result.to_dict()


# ---------------------------------------------------------------- slow: chapter 6's autograder and a class

@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    from bedkd_core.grading.assign import masters, run_otter

    out = tmp_path_factory.mktemp("dist")
    run_otter(masters([6])[6], out / "ch06")
    return out


@pytest.fixture(scope="module")
def graded(dist, tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("class")
    for name, bodies in CLASS.items():
        submission(folder / f"{name}.ipynb", bodies)
    OUTSIDE.unlink(missing_ok=True)
    csv_path = folder.parent / "grades.csv"
    found = grader.grade_all([folder], chapter=6, dist=dist, limits=Limits(time_s=10, memory_mb=3072))
    grader.write_csv(found, csv_path)
    results = {Path(r.file).stem: r for r in found}
    return results, csv_path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BEDKD_GRADING_SEED", "4321")
        yield mp


def points(result) -> dict:
    return {q.name: (q.points, q.status, q.feedback) for q in result.questions}


@pytest.mark.slow
def test_correct_gets_full_marks_and_a_stub_none(graded):
    results, _ = graded
    assert results["correct"].total == results["correct"].max_points == 8
    stub = points(results["stub"])
    assert all(p == 0 and s == "not_implemented" and "not implemented" in f for p, s, f in stub.values())


@pytest.mark.slow
@pytest.mark.parametrize("name, question, status, says", [
    ("import_reference", "threshold_at_frr", "refused", "import bedkd_core"),
    ("patch_grader", "strip_entropy", "refused", "import bedkd_core.grading"),
    ("hang_in_function", "threshold_at_frr", "timeout", "timed out"),
    ("hang_at_top_level", "threshold_at_frr", "timeout", "timed out"),
    ("write_outside", "threshold_at_frr", "refused", "writing"),
    ("read_key", "strip_entropy", "refused", "reading"),
    ("memory_bomb", "strip_entropy", "memory", "memory"),
    ("start_process", "strip_entropy", "refused", "os.system"),
])
def test_each_cheat_scores_zero_and_the_other_question_is_graded(graded, name, question, status, says):
    results, _ = graded
    got = points(results[name])
    assert got[question][:2] == (0.0, status) and says in got[question][2], got
    other = next(q for q in got if q != question)
    assert got[other][0] == 4.0, got


@pytest.mark.slow
def test_nothing_was_written_outside_and_the_class_csv_has_one_row_each(graded):
    import csv

    results, csv_path = graded
    assert not OUTSIDE.exists()
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(Path(r["file"]).stem for r in rows) == sorted(CLASS)
    totals = {Path(r["file"]).stem: float(r["total"]) for r in rows}
    assert totals["correct"] == 8 and totals["stub"] == 0
