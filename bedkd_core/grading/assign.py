"""`bedkd assign`: run `otter assign` on each assignment master, keep the student copies in assignments/student/.

A master is assignments/chNN_<slug>.ipynb; otter writes dist/chNN/{autograder,student}/ (the autograder zip holds
the hidden tests; dist/ is not committed). The student notebook is normalised (outputs stripped, cell ids from
the file name, JSON with indent 1) so that a rerun gives the same bytes; `--check` says which copies are stale.

Colab keeps no notebook file on disk, so otter cannot read tests from a notebook's metadata there: the public
tests are files, assignments/student/tests/<master name>/<question>.py, which the setup cell's clone of the
book brings along. otter's own first cell (`import otter`, before bedkd_core and otter are installed) becomes
`INIT_CELL`, placed right after the setup cell, pointing otter at those files.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ..data import DataError
from ..store import REPO_ROOT, atomic_dir, atomic_file

ASSIGNMENTS = REPO_ROOT / "assignments"
MASTER = re.compile(r"ch(\d\d)_[a-z0-9_]+\.ipynb")
SETUP_CELL = REPO_ROOT / "chapters" / "_setup_cell.py"
OTTER_INIT = "# Initialize Otter"
INIT_CELL = """# The public tests: grader.check("<question>") runs them on your function.
import otter
from bedkd_core.grading import public_tests

grader = otter.Notebook(tests_dir=public_tests("{name}"))"""


def masters(chapters=None, *, folder: Path = ASSIGNMENTS) -> dict[int, Path]:
    """{chapter: master notebook}, all of them or those of `chapters` (a missing one is a DataError)."""
    found = {int(m.group(1)): p for p in sorted(folder.glob("ch*.ipynb")) if (m := MASTER.fullmatch(p.name))}
    if chapters:
        missing = [c for c in chapters if c not in found]
        if missing:
            raise DataError(f"no assignment master for chapter(s) {missing} in {folder}")
        found = {c: found[c] for c in chapters}
    return found


def run_otter(master: Path, out: Path, *, run_tests: bool = True) -> None:
    """`otter assign MASTER OUT` with this bedkd_core on the kernel's path; its log only if it fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    command = [sys.executable, "-m", "otter", "assign", str(master), str(out)]
    if not run_tests:
        command.append("--no-run-tests")
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=master.parent)
    if done.returncode != 0 or not list((out / "autograder").glob("*.zip")):
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise DataError(f"otter assign failed on {master} (exit {done.returncode}):\n{tail}")


def _with_init_after_setup(cells: list[dict], *, path: Path) -> list[dict]:
    """otter's init cell replaced by INIT_CELL right after the setup cell, which must be the first code cell."""
    setup = SETUP_CELL.read_text(encoding="utf-8").strip()
    code = [i for i, cell in enumerate(cells) if cell.get("cell_type") == "code"
            and not "".join(cell["source"]).startswith(OTTER_INIT)]
    if not code or "".join(cells[code[0]]["source"]).strip() != setup:
        raise DataError(f"{path}: the first code cell of an assignment must be chapters/_setup_cell.py (it installs "
                        f"bedkd_core and otter in Colab); copy that file's text into the master's first code cell")
    init = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": INIT_CELL.format(name=path.stem)}
    kept = [cell for cell in cells if not "".join(cell.get("source", "")).startswith(OTTER_INIT)]
    at = kept.index(cells[code[0]]) + 1
    return kept[:at] + [init] + kept[at:]


def _badge(name: str) -> dict:
    """The student copy's first cell: its own "Open in Colab" badge."""
    from ..copies import colab_url
    from ..student import BADGE

    url = colab_url(root=REPO_ROOT, path=f"assignments/student/{name}")
    return {"cell_type": "markdown", "metadata": {},
            "source": f"[![Open In Colab]({BADGE})]({url})\n\n> **Graded assignment.** Run the setup cell first; "
                      f"`grader.check(...)` runs the public tests."}


def normalised(path: Path) -> str:
    """The student notebook as committed: its Colab badge first, otter's init after the setup cell, no outputs
    or execution counts, stable cell ids, indent 1."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    notebook["cells"] = [_badge(path.name)] + _with_init_after_setup(notebook["cells"], path=path)
    for index, cell in enumerate(notebook["cells"]):
        cell["id"] = f"{path.stem.replace('_', '-')}-{index:02d}"
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["nbformat"], notebook["nbformat_minor"] = 4, max(5, notebook.get("nbformat_minor", 5))
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def assign(*, chapters=None, dist: Path = REPO_ROOT / "dist", student: Path = ASSIGNMENTS / "student") -> list[Path]:
    """Run otter assign for each master into dist/chNN/ and write the student copies; the copies written."""
    written = []
    for chapter, master in masters(chapters).items():
        with atomic_dir(Path(dist) / f"ch{chapter:02d}") as out:
            out.rmdir()  # otter assign makes the folder itself
            run_otter(master, out)
            text = normalised(out / "student" / master.name)
            tests = _public_tests(out / "student" / "tests")
        target = Path(student) / master.name
        with atomic_dir(Path(student) / "tests" / master.stem) as folder:
            for name, source in tests.items():
                (folder / name).write_text(source, encoding="utf-8")
        with atomic_file(target, "w") as handle:
            handle.write(text)
        written.append(target)
    return written


def _public_tests(folder: Path) -> dict[str, str]:
    """{file name: text} of the student's test files (otter leaves the hidden cases out of them)."""
    tests = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))}
    if not tests:
        raise DataError(f"{folder}: otter wrote no public test files; the master's ASSIGNMENT CONFIG needs "
                        f"`tests: {{files: true, ok_format: false}}`")
    return tests


def stale(*, chapters=None, student: Path = ASSIGNMENTS / "student") -> list[str]:
    """The student copies that differ from what `bedkd assign` would write (otter runs without its tests)."""
    problems = []
    for chapter, master in masters(chapters).items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            run_otter(master, out, run_tests=False)
            text = normalised(out / "student" / master.name)
            tests = _public_tests(out / "student" / "tests")
        target = Path(student) / master.name
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{target}: stale")
        folder = Path(student) / "tests" / master.stem
        have = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))}
        if have != tests:
            problems.append(f"{folder}: stale public tests")
    return problems
