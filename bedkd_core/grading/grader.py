"""Grade submissions against an assignment's autograder (the zip `otter assign` writes).

Each question's test file (tests/<question>.py, otter's exception-based format) is run by otter's own
`ExceptionTestFile.run` in this process, with env = {question name: Proxy}; the student's code runs only in the
sandbox. The reference implementations and the hidden rows exist only here.
"""
from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import DataError
from ..store import REPO_ROOT, atomic_file
from .runner import MESSAGES, ZERO, Limits, Proxy, Session, graded_cells

DIST = REPO_ROOT / "dist"


@dataclass
class Question:
    name: str
    points: float
    max_points: float
    status: str
    feedback: str


@dataclass
class Submission:
    file: str
    questions: list[Question] = field(default_factory=list)
    output: str = ""

    @property
    def total(self) -> float:
        return round(sum(q.points for q in self.questions), 6)

    @property
    def max_points(self) -> float:
        return round(sum(q.max_points for q in self.questions), 6)

    @property
    def status(self) -> str:
        bad = [f"{q.name}: {q.status}" for q in self.questions if q.status != "ok"]
        return "; ".join(bad) or "ok"

    def to_dict(self) -> dict:
        return {"file": self.file, "total": self.total, "max": self.max_points, "status": self.status,
                "questions": [asdict(q) for q in self.questions], "output": self.output}


def autograder_zip(*, chapter: int, dist: Path | str = DIST) -> Path:
    """The newest autograder zip of chapter `chapter` under `dist`, or a DataError saying how to make one."""
    folder = Path(dist) / f"ch{chapter:02d}" / "autograder"
    zips = sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not zips:
        raise DataError(f"no autograder for chapter {chapter} in {folder}: run `bedkd assign --chapter {chapter}`")
    return zips[-1]


def load_tests(path: Path | str) -> dict:
    """{question name: otter ExceptionTestFile} from an autograder zip's tests/*.py."""
    from otter.test_files import ExceptionTestFile

    try:
        with zipfile.ZipFile(path) as archive:
            sources = {Path(n).stem: archive.read(n).decode() for n in sorted(archive.namelist())
                       if n.startswith("tests/") and n.endswith(".py")}
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable autograder zip ({err})") from None
    if not sources:
        raise DataError(f"{path}: holds no tests/*.py")
    return {name: ExceptionTestFile.from_string(source, path=f"tests/{name}.py")
            for name, source in sources.items()}


def read_cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells, or a DataError naming the file."""
    try:
        notebook = json.loads(Path(path).read_text(encoding="utf-8"))
        return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in notebook["cells"] if c.get("cell_type") == "code"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a readable notebook ({type(err).__name__}: {err})") from None


def _feedback(test_file) -> str:
    """The first failing test case's message, without the test's source lines."""
    for result in test_file.test_case_results:
        if not result.passed:
            return result.message.strip().splitlines()[-1].split(": ", 1)[-1][:300]
    return ""


def grade_notebook(path: Path | str, *, tests: dict, limits: Limits = Limits(),
                   refuse_read: list[str] = ()) -> Submission:
    """Grade one notebook: every question's tests, the student's code in its own sandboxed process."""
    path = Path(path)
    names = sorted(tests)
    cells, broken = graded_cells(read_cells(path), names)
    session = Session(cells=cells, names=names, limits=limits, refuse_read=[str(path), *refuse_read])
    defined = {name for _, _, defines in cells for name in defines}
    result = Submission(file=str(path))
    try:
        for name in names:
            test_file = tests[name]
            possible = float(test_file.possible)
            if name not in defined:
                note = f" ({broken} cell(s) do not parse)" if broken else ""
                result.questions.append(Question(name, 0.0, possible, "missing", MESSAGES["missing"] + note))
                continue
            test_file.run({name: Proxy(session, name)})
            status = session.status.get(name)
            if status in ZERO:
                result.questions.append(Question(name, 0.0, possible, status, session.feedback[name]))
                continue
            score = float(test_file.score)
            status = "ok" if score >= possible else ("error" if status == "error" else "partial")
            feedback = _feedback(test_file) if score < possible else ""
            result.questions.append(Question(name, score, possible, status, feedback))
    finally:
        session.close()
        result.output = "".join(session.outputs)[-2000:]
    return result


def submissions(paths) -> list[Path]:
    """The notebooks to grade: each file given, and every .ipynb directly inside each folder given."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such notebook or folder")
    if not found:
        raise DataError(f"no .ipynb to grade in {', '.join(map(str, paths))}")
    return found


def grade_all(paths, *, chapter: int, dist: Path | str = DIST, limits: Limits = Limits()) -> list[Submission]:
    """Grade every submission in `paths` (files or class folders) against chapter `chapter`'s autograder."""
    archive = autograder_zip(chapter=chapter, dist=dist)
    load_tests(archive)  # a broken autograder stops the run before any grading
    notebooks = submissions(paths)
    hidden = [str(archive), str(Path(dist).resolve()), str(REPO_ROOT / "assignments"),
              *{str(p.resolve().parent) for p in notebooks}]
    for notebook in notebooks:
        read_cells(notebook)  # an unreadable file stops the run before any grading
    return [grade_notebook(n, tests=load_tests(archive), limits=limits, refuse_read=hidden) for n in notebooks]


def write_csv(results: list[Submission], path: Path | str) -> None:
    """One row per submission: file, each question's points, total, max, status, feedback (atomic write)."""
    names = sorted({q.name for r in results for q in r.questions})
    with atomic_file(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *names, "total", "max", "status", "feedback"])
        for r in results:
            points = {q.name: q.points for q in r.questions}
            notes = "; ".join(f"{q.name}: {q.feedback}" for q in r.questions if q.feedback)
            writer.writerow([r.file, *[points.get(n, "") for n in names], r.total, r.max_points, r.status, notes])
