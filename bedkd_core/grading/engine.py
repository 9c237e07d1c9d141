"""The grading engine: results, time limits, loading a student's function from a cell, the check registry, running.

Checks modules register an assignment with `checker(name, signature, prepare)` and add checks with
`@check(name, points, label)`; `run_checks(name, fn)` runs them on the student's function. Whatever the student's
code raises or prints becomes feedback, never a traceback.
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

CELL_TIME_LIMIT = 60.0
"""Seconds the assignment cell may take to execute."""
CHECK_TIME_LIMIT = 30.0
"""Seconds one check (all its calls of the student's function) may take."""


class GradingTimeout(BaseException):
    """Raised inside student code by the alarm; a BaseException so `except Exception` in student code can't eat it."""


class StudentError(Exception):
    """The student's function raised, timed out or returned something unusable; the message says which."""


class NotImplementedYet(Exception):
    """The student's function raises NotImplementedError (a student copy's stub)."""


# ---------------------------------------------------------------- the report

@dataclass
class CheckResult:
    name: str
    points: float
    max_points: float
    passed: bool
    feedback: str


@dataclass
class ExerciseResult:
    name: str
    status: str
    """graded, not implemented, missing, error (the cell or function is broken), no checker."""
    checks: list[CheckResult] = field(default_factory=list)
    reason: str = ""
    max_points: float = 0.0
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return float(sum(c.points for c in self.checks))

    @property
    def max_score(self) -> float:
        return float(sum(c.max_points for c in self.checks)) if self.checks else float(self.max_points)

    def feedback(self) -> list[str]:
        lines = [self.reason] if self.reason else []
        return lines + [f"{self.name}: {c.feedback}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "score": self.score, "max_score": self.max_score,
                "reason": self.reason, "feedback": self.feedback(), "seconds": round(self.seconds, 2),
                "checks": [dataclasses.asdict(c) for c in self.checks]}


@dataclass
class GradeReport:
    notebook: str
    exercises: list[ExerciseResult]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return float(sum(e.score for e in self.exercises))

    @property
    def max_score(self) -> float:
        return float(sum(e.max_score for e in self.exercises))

    def exercise(self, name: str) -> ExerciseResult:
        return next(e for e in self.exercises if e.name == name)

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "exercises": [e.to_dict() for e in self.exercises], "notes": self.notes,
                "seconds": round(self.seconds, 2)}

    def format_table(self) -> str:
        lines = [f"Grading {self.notebook}", ""]
        width = max([len("exercise")] + [len(e.name) for e in self.exercises]) + 2
        lines.append(f"{'exercise':<{width}}{'score':>10}   status")
        lines.append("-" * (width + 30))
        for ex in self.exercises:
            lines.append(f"{ex.name:<{width}}{_pts(ex.score) + '/' + _pts(ex.max_score):>10}   {ex.status}")
            if ex.reason:
                lines.append(f"    {ex.reason}")
            for check in ex.checks:
                mark = "ok  " if check.passed else "FAIL"
                lines.append(f"    [{mark}] {_pts(check.points)}/{_pts(check.max_points)}  {check.feedback}")
        lines.append("-" * (width + 30))
        lines.append(f"{'total':<{width}}{_pts(self.score) + '/' + _pts(self.max_score):>10}   "
                     f"(graded in {self.seconds:.1f} s)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _pts(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------- running student code safely

@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise GradingTimeout in the main thread after `seconds` (no limit off the main thread or without SIGALRM)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise GradingTimeout(f"took longer than {seconds:g} s")

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)  # e.g. pytest-timeout's alarm: re-armed afterwards
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds if not outer_left else min(seconds, outer_left))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


@contextlib.contextmanager
def _quiet():
    """Swallow what student code prints or warns, so the report stays readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    where = _student_line(err)
    return f"{type(err).__name__}{': ' + text if text else ''}{where}"


def _student_line(err: BaseException) -> str:
    tb, line = err.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<assignment "):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (cell line {line})" if line else ""


def _hint(err: BaseException) -> str:
    if isinstance(err, NameError):
        return " - the assignment cell must be self-contained: put its imports inside the cell"
    return ""


class StudentFunction:
    """The student's function, quietened; what it raises becomes StudentError (NotImplementedYet for a stub).

    The time limit is per check (`run_checks` arms it): the alarm that ends an endless loop surfaces here."""

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn = name, fn

    def __call__(self, *args, **kwargs):
        try:
            with _quiet():
                return self.fn(*args, **kwargs)
        except NotImplementedError as err:
            raise NotImplementedYet(str(err) or "NotImplementedError") from None
        except GradingTimeout as err:
            raise StudentError(f"{self.name} did not finish: this check {err} (an endless loop?)") from None
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - anything the student's code raises is feedback
            raise StudentError(f"{self.name} raised {_describe(err)}{_hint(err)}") from None


def load_function(source: str, name: str, *, label: str = "cell") -> tuple[Callable | None, str]:
    """Execute one cell's source in a fresh namespace; (the function `name`, "") or (None, why not)."""
    try:
        source = ipython_to_python(source)
        code = compile(source, f"<assignment {name}>", "exec")
    except SyntaxError as err:
        return None, f"the {label} has a syntax error on line {err.lineno}: {err.msg}"
    namespace = {"__name__": f"__bedkd_assignment_{name}__", "__builtins__": builtins}
    try:
        with _time_limit(CELL_TIME_LIMIT), _quiet():
            exec(code, namespace)  # noqa: S102 - executing the student's cell is the point of a grader
    except NotImplementedError:
        return None, f"the {label} raises NotImplementedError when executed: not implemented"
    except GradingTimeout:
        return None, f"the {label} took longer than {CELL_TIME_LIMIT:g} s to execute"
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001
        return None, f"the {label} raised {_describe(err)}{_hint(err)} when executed"
    fn = namespace.get(name)
    if fn is None:
        defined = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__")
                         and getattr(v, "__module__", None) == namespace["__name__"])
        also = f" (it defines {', '.join(defined)})" if defined else ""
        return None, f"the {label} does not define a function named `{name}`{also}"
    if not callable(fn):
        return None, f"`{name}` in the {label} is a {type(fn).__name__}, not a function"
    return fn, ""


def ipython_to_python(source: str) -> str:
    """Turn IPython syntax (%magics, !shell) into plain Python, when IPython is installed."""
    if not re.search(r"^\s*[%!]", source, flags=re.M):
        return source
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    return TransformerManager().transform_cell(source)


# ---------------------------------------------------------------- checks and the registry

@dataclass(frozen=True)
class Check:
    """One check: what it verifies, its points, and run(fn) → None when it passes, else the feedback."""

    label: str
    points: float
    run: Callable[[StudentFunction], str | None]


@dataclass
class Checker:
    """An assignment's checks, and `prepare()`, which loads their data before any time limit starts."""

    signature: str
    prepare: Callable[[], None]
    checks: list[Check] = field(default_factory=list)

    @property
    def max_points(self) -> float:
        return float(sum(c.points for c in self.checks))


CHECKERS: dict[str, Checker] = {}
"""assignment name → its checker. Building it loads nothing; `prepare()` loads the real data."""


def checker(name: str, signature: str, prepare: Callable[[], None]) -> None:
    CHECKERS[name] = Checker(signature=signature, prepare=prepare)


def check(name: str, points: float, label: str):
    """Decorator: add a check to the assignment `name` (checks run in the order they are defined)."""
    def wrap(run):
        CHECKERS[name].checks.append(Check(label=label, points=points, run=run))
        return run
    return wrap


def run_checks(name: str, fn: Callable) -> ExerciseResult:
    """Run the checks registered for `name` on `fn` (the data is loaded first, outside the time limits)."""
    spec = CHECKERS[name]
    spec.prepare()
    student = StudentFunction(name, fn)
    result = ExerciseResult(name=name, status="graded")
    for item in spec.checks:
        try:
            with _time_limit(CHECK_TIME_LIMIT):
                problem = item.run(student)
        except NotImplementedYet as err:
            return ExerciseResult(name=name, status="not implemented", max_points=spec.max_points,
                                  reason=f"{name}: not implemented (the function raises NotImplementedError: {err})")
        except StudentError as err:
            problem = str(err)
        except GradingTimeout:
            problem = f"{name} took longer than {CHECK_TIME_LIMIT:g} s on this check"
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. a result of an unexpected type that the check could not use
            problem = f"the result could not be checked ({type(err).__name__}: {err})"
        result.checks.append(CheckResult(name=item.label, points=0.0 if problem else float(item.points),
                                         max_points=float(item.points), passed=problem is None,
                                         feedback=item.label if problem is None else problem))
    return result
