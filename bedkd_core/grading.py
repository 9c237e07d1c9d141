"""Autograde the graded assignments of a chapter notebook: `bedkd grade NOTEBOOK [--json]`.

A graded assignment is a code cell tagged `assignment:<name>` (and `solution`) that defines one self-contained
top-level function `<name>`. The grader executes that cell alone in a fresh namespace, then runs the checker
registered for `<name>` in `CHECKERS`: it calls the function on real data (SST-2 and AG News sentences, labels,
and probabilities, logits and hidden states of the packaged MiniLM) and compares it with the reference in
bedkd_core. Every check gives points and feedback that says what went wrong. Broken cells, missing functions and
functions that raise score 0 with the reason; grading never prints a traceback.

Exit codes: 0 when grading ran (whatever the score), 2 when the notebook cannot be read.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import dataclasses
import io
import json
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

TAG_PREFIX = "assignment:"
DESCRIPTION = ("Autograde the notebook's graded assignments (code cells tagged assignment:<name>) on real data "
               "against the reference implementations in bedkd_core. Exit status 0 when grading ran, whatever "
               "the score; 2 when the notebook cannot be read.")

EXPECTED = {
    3: ["insert_trigger"],
    4: ["flip_labels", "agreement_score"],
    5: ["punish_loss"],
    6: ["threshold_at_frr"],
}
"""The assignments each chapter (by its number NN in NN_name.ipynb) must carry; missing ones score 0."""

CELL_TIME_LIMIT = 60.0
"""Seconds the assignment cell may take to execute."""
CHECK_TIME_LIMIT = 30.0
"""Seconds one check (all its calls of the student's function) may take."""


class NotebookError(ValueError):
    """The notebook cannot be read: not a file, not JSON, not a notebook."""


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
        source = _ipython_to_python(source)
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


def _ipython_to_python(source: str) -> str:
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


# ---------------------------------------------------------------- real data, loaded once per process

@lru_cache(maxsize=None)
def _task(name: str):
    from .data import load_task

    return load_task(name)


@lru_cache(maxsize=None)
def _sentences(dataset: str, n: int, seed: int = 0) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """n test sentences of a dataset (a fixed random draw) and their labels."""
    test = _task(dataset).test
    rows = np.random.default_rng(seed).choice(len(test), size=n, replace=False)
    return tuple(test[int(i)]["text"] for i in rows), tuple(int(test[int(i)]["label"]) for i in rows)


HEADS = {(2, 0): slice(0, 2), (2, 1): slice(2, 4), (4, 0): slice(4, 8), (4, 1): slice(8, 12)}
"""(number of classes, seed) → the logits of that classification head within the grading model's output."""
MAX_LENGTH = 64
"""Tokens per sentence in the grader's forward passes (AG News articles are truncated; keeps grading fast)."""
HEAD_STD = 1.5
"""Head weights ~ N(0, HEAD_STD²): MiniLM's pooled features have norm ≈ 1.3, so logits spread over a few units and
the probabilities are far from uniform; with BERT's default init (0.02) they sit near 1/K and mistakes hide."""


@lru_cache(maxsize=None)
def _minilm():
    """The packaged MiniLM, loaded once, with several seeded linear heads side by side (see `HEADS`).

    Kept in memory only, never on disk. Two heads of the same K on one encoder act as two models that differ in
    their classifier only: a 'teacher' (seed 0) and a 'DMM' or 'student' (seed 1).
    """
    import torch

    from .models import load_classifier

    with torch.random.fork_rng(devices=[]), _no_progress_bars():
        torch.manual_seed(0)
        model, tokenizer = load_classifier("minilm", num_labels=max(s.stop for s in HEADS.values()))
    with torch.no_grad():
        weight = model.classifier.weight
        for (k, seed), rows in HEADS.items():
            draw = torch.randn(weight[rows].shape, generator=torch.Generator().manual_seed(1000 * k + seed))
            weight[rows] = (HEAD_STD * draw).to(weight.device)
        model.classifier.bias.zero_()
    return model.eval(), tokenizer


@contextlib.contextmanager
def _no_progress_bars():
    """transformers draws a 'Loading weights' bar on stderr; keep the grader's output clean."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _forward(texts, *, train: bool = False):
    """Logits of every head and last hidden states of MiniLM on `texts` (one padded batch), on the CPU."""
    import torch

    from .training import tokenize

    model, tokenizer = _minilm()
    inputs = tokenize(tokenizer, list(texts), MAX_LENGTH)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.train(train)  # train mode: dropout on, as for the student during AKD
        try:
            out = model(**inputs, output_hidden_states=True)
        finally:
            model.eval()
    return out.logits.float().cpu(), out.hidden_states[-1].float().cpu(), inputs["attention_mask"].cpu()


@lru_cache(maxsize=None)
def _probabilities(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Teacher and DMM softmax probabilities on 64 real test sentences: MiniLM with two seeded heads."""
    import torch

    from .data import NUM_CLASSES

    texts, _ = _sentences(dataset, 64)
    k = NUM_CLASSES[dataset]
    logits, _, _ = _forward(texts)
    return tuple(torch.softmax(logits[:, HEADS[(k, seed)]], dim=-1).numpy() for seed in (0, 1))


@lru_cache(maxsize=None)
def _distillation_batch(dataset: str) -> dict:
    """Real student/teacher logits and last hidden states for 16 test sentences, with their labels.

    The student is MiniLM with the seed-1 head in train mode (dropout on, as during AKD), the teacher MiniLM with
    the seed-0 head in eval mode, so logits and hidden states differ. The batch is padded: padding counts in the MSE.
    """
    import torch

    from .data import NUM_CLASSES

    texts, labels = _sentences(dataset, 16, seed=1)
    k = NUM_CLASSES[dataset]
    s_logits, s_hidden, mask = _forward(texts, train=True)
    t_logits, t_hidden, _ = _forward(texts)
    return {"student_logits": s_logits[:, HEADS[(k, 1)]].contiguous(),
            "teacher_logits": t_logits[:, HEADS[(k, 0)]].contiguous(),
            "student_hidden": s_hidden, "teacher_hidden": t_hidden,
            "labels": torch.tensor(labels), "attention_mask": mask}


DATASET_NAMES = {"sst2": "SST-2", "agnews": "AG News"}


def _preview(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


# ---------------------------------------------------------------- ch. 3: insert_trigger

TRIGGER_WORDS = ("cf", "mn", "bb", "tq")
SEEDS_PER_SLOT = 50


@lru_cache(maxsize=None)
def _trigger_sentences() -> tuple[str, ...]:
    """40 SST-2 test sentences of 3+ words that contain none of the trigger words."""
    texts, _ = _sentences("sst2", 200, seed=3)
    ok = [t for t in texts if len(t.split()) >= 3 and not set(t.split()) & set(TRIGGER_WORDS)]
    return tuple(ok[:40])


def _trigger_cases() -> list[tuple[str, list[str], int]]:
    """(sentence, words, seed): one to four distinct words, and every fifth case the same word twice."""
    return [(text, list(TRIGGER_WORDS[: 1 + i % 4]) if i % 5 else ["cf", "cf"], 100 + i)
            for i, text in enumerate(_trigger_sentences())]


def _uniformity_sentence() -> str:
    return next(t for t in _trigger_sentences() if 8 <= len(t.split()) <= 14)


def _prepare_insert_trigger() -> None:
    _trigger_sentences()


checker("insert_trigger", "insert_trigger(text: str, words: list[str], seed: int) -> str", _prepare_insert_trigger)


def _inserted(text: str, words: list[str], seed: int, out) -> str | None:
    """Why `out` is not `text` with each of `words` inserted once as a whole word (None when it is)."""
    call = f"insert_trigger({_preview(text)}, {words!r}, seed={seed})"
    if not isinstance(out, str):
        return f"{call} returned {type(out).__name__}, expected str"
    tokens, original = out.split(), text.split()
    counts, want = Counter(t for t in tokens if t in set(words)), Counter(words)
    for word in want:
        if counts[word] != want[word]:
            return (f"{call}: {word!r} appears {counts[word]} time(s) as a separate word, expected {want[word]} "
                    f"(got {_preview(out, 70)})")
    if [t for t in tokens if t not in set(words)] != original:
        return (f"{call}: the original words are changed, lost or out of order (got {_preview(out, 70)}); "
                "insert whole words between the sentence's words and keep every original word in order")
    return None


def _positions(fn, text: str, seeds) -> list[int] | str:
    """Where the single trigger word lands for each seed, or the feedback when an output is malformed."""
    positions = []
    for seed in seeds:
        out = fn(text, ["cf"], seed)
        problem = _inserted(text, ["cf"], seed, out)
        if problem:
            return problem
        positions.append(out.split().index("cf"))
    return positions


@check("insert_trigger", 1, "returns a str")
def _returns_str(fn):
    out = fn(_trigger_sentences()[0], ["cf"], 0)
    return None if isinstance(out, str) else f"returned {type(out).__name__}, expected str"


@check("insert_trigger", 4, "inserts every word exactly once and keeps the original words in order (40 SST-2 sentences)")
def _each_word_once(fn):
    for text, words, seed in _trigger_cases():
        problem = _inserted(text, words, seed, fn(text, list(words), seed))
        if problem:
            return problem
    return None


@check("insert_trigger", 1, "same seed, same result (independent of the global random state)")
def _deterministic(fn):
    for text, words, seed in _trigger_cases()[:10]:
        random.seed(seed + 1)
        first = fn(text, list(words), seed)
        random.seed(seed + 2)  # the global random state must not matter
        if fn(text, list(words), seed) != first:
            return (f"insert_trigger({_preview(text)}, {words!r}, seed={seed}) gave different results on two calls: "
                    "draw positions with random.Random(seed), not the global `random` functions")
    return None


@check("insert_trigger", 2, "the position varies across seeds")
def _varies(fn):
    text = _uniformity_sentence()
    n = len(text.split())
    seeds = range(SEEDS_PER_SLOT * (n + 1))
    positions = _positions(fn, text, seeds)
    if isinstance(positions, str):
        return positions
    used = sorted(set(positions))
    if len(used) > 1:
        return None
    where = {0: "always at the start: it is prepended", n: "always at the end: it is appended"}.get(
        used[0], f"always at word position {used[0]}")
    return (f"across {len(seeds)} seeds the trigger lands {where}, not inserted at a random position "
            f"(sentence of {n} words: {_preview(text)})")


@check("insert_trigger", 2, "positions are uniform over the n+1 slots of an n-word sentence (50 seeds per slot)")
def _uniform(fn):
    text = _uniformity_sentence()
    n = len(text.split())
    seeds = range(SEEDS_PER_SLOT * (n + 1))
    positions = _positions(fn, text, seeds)
    if isinstance(positions, str):
        return positions
    counts = Counter(positions)
    never = [p for p in range(n + 1) if counts[p] == 0]
    if len(never) > n / 2:
        return (f"only word positions {sorted(counts)} occur across {len(seeds)} seeds; every slot 0..{n} of a "
                f"sentence of {n} words should be about equally likely")
    if never:
        end = (f" - position {n} is the end of the sentence: draw from 0..len(tokens) inclusive, "
               "e.g. rng.randint(0, len(tokens))") if n in never else ""
        return f"word positions {never} of 0..{n} never occur across {len(seeds)} seeds (sentence of {n} words){end}"
    off = [p for p in range(n + 1) if not 0.4 * SEEDS_PER_SLOT <= counts[p] <= 1.6 * SEEDS_PER_SLOT]
    if off:
        table = ", ".join(f"position {p}: {counts[p]}" for p in off)
        return (f"positions are not uniform over the {n + 1} slots 0..{n}: expected about {SEEDS_PER_SLOT} of "
                f"{len(seeds)} seeds at each, got {table}")
    return None


# ---------------------------------------------------------------- ch. 4: flip_labels

@lru_cache(maxsize=None)
def _flip_data() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Real label lists: SST-2 train (K=2) and AG News test (K=4)."""
    return tuple(int(y) for y in _task("sst2").train["label"]), tuple(int(y) for y in _task("agnews").test["label"])


checker("flip_labels", "flip_labels(labels: list[int], num_classes: int) -> list[int]", _flip_data)


def _as_int_list(out) -> list[int] | None:
    try:
        values = list(out)
    except TypeError:
        return None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return None
    return [int(v) for v in values]


def _flip_problem(fn, labels, k: int, what: str) -> str | None:
    from .defenses.bedkd import flip_labels

    labels = list(labels)
    expected = flip_labels(labels, num_classes=k)
    out = _as_int_list(fn(list(labels), num_classes=k))
    if out is None:
        return f"for K={k} the result is not a sequence of ints"
    if len(out) != len(labels):
        return f"for K={k} returned {len(out)} labels for {len(labels)} inputs"
    wrong: dict[int, set[int]] = {}
    for y, got, want in zip(labels, out, expected):
        if got != want:
            wrong.setdefault(y, set()).add(got)
    if not wrong:
        return None
    mapped = "; ".join(f"label {y} mapped to {'/'.join(map(str, sorted(g)))}, expected {(y + 1) % k}"
                       for y, g in sorted(wrong.items()))
    return f"wrong for K={k} ({what}): {mapped}"


@check("flip_labels", 2, "returns a list of Python ints, one per label")
def _returns_list(fn):
    labels = list(_flip_data()[0][:100])
    out = fn(list(labels), num_classes=2)
    if not isinstance(out, list):
        return f"returned {type(out).__name__}, expected a list"
    if len(out) != len(labels):
        return f"returned {len(out)} labels for {len(labels)} inputs"
    bad = next((v for v in out if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        return f"returned a list holding {type(bad).__name__} values, expected Python ints"
    return None


@check("flip_labels", 3, "K=2 matches the reference bedkd_core flip_labels on the SST-2 train labels")
def _flip_k2(fn):
    return _flip_problem(fn, _flip_data()[0], 2, "SST-2 train labels")


@check("flip_labels", 4, "K=4 matches the reference bedkd_core flip_labels on the AG News test labels")
def _flip_k4(fn):
    return _flip_problem(fn, _flip_data()[1], 4, "AG News test labels")


@check("flip_labels", 1, "leaves the input list unchanged")
def _flip_pure(fn):
    labels = list(_flip_data()[1][:200])
    given = list(labels)
    fn(given, num_classes=4)
    return None if given == labels else "modified the input list in place: return a new list"


# ---------------------------------------------------------------- ch. 4: agreement_score

def _prepare_agreement() -> None:
    _probabilities("sst2")
    _probabilities("agnews")


checker("agreement_score", "agreement_score(p_teacher: np.ndarray, p_dmm: np.ndarray) -> np.ndarray",
        _prepare_agreement)

AGREEMENT_MISTAKES = {
    "the sum over classes instead of the mean (forgot the 1/C)": lambda d: np.abs(d).sum(1),
    "the maximum over classes instead of the mean": lambda d: np.abs(d).max(1),
    "the mean of signed differences (forgot the absolute value)": lambda d: d.mean(1),
    "the mean of squared differences instead of absolute ones": lambda d: (d ** 2).mean(1),
    "the root mean squared difference instead of the mean absolute one": lambda d: np.sqrt((d ** 2).mean(1)),
    "half the L1 distance (total variation) instead of the mean over classes": lambda d: np.abs(d).sum(1) / 2,
}


def _agreement_problem(fn, dataset: str) -> str | None:
    p_t, p_d = _probabilities(dataset)
    n, k = p_t.shape
    expected = np.abs(p_t - p_d).mean(1).astype(np.float64)
    out = np.asarray(fn(p_t.copy(), p_d.copy()), dtype=np.float64)
    if out.shape != (n,):
        return f"{DATASET_NAMES[dataset]} (K={k}): returned shape {out.shape} for {n}x{k} probabilities, expected ({n},)"
    if np.allclose(out, expected, rtol=1e-5, atol=1e-7):
        return None
    row = int(np.argmax(np.abs(out - expected)))
    d = (p_t - p_d).astype(np.float64)
    for mistake, wrong in AGREEMENT_MISTAKES.items():
        value = wrong(d)
        if np.allclose(out, value, rtol=1e-5, atol=1e-7) and not np.allclose(value, expected, rtol=1e-5, atol=1e-7):
            return (f"wrong on {DATASET_NAMES[dataset]} (K={k}): looks like {mistake} "
                    f"(row {row}: got {out[row]:.6f}, expected {expected[row]:.6f})")
    return (f"wrong on {DATASET_NAMES[dataset]} (K={k}): row {row} got {out[row]:.6f}, expected mean over classes of "
            f"|p_teacher - p_dmm| = {expected[row]:.6f}")


@check("agreement_score", 2, "returns a numpy array with one score per row")
def _agreement_shape(fn):
    p_t, p_d = _probabilities("sst2")
    out = fn(p_t.copy(), p_d.copy())
    if not isinstance(out, np.ndarray):
        return f"returned {type(out).__name__}, expected a numpy.ndarray"
    if out.shape != (len(p_t),):
        return (f"returned shape {out.shape} for {p_t.shape[0]}x{p_t.shape[1]} probabilities, expected "
                f"({len(p_t)},): one score per row (average over the class axis, axis=1)")
    return None


@check("agreement_score", 3, "matches the reference on MiniLM probabilities of 64 SST-2 sentences (K=2)")
def _agreement_k2(fn):
    return _agreement_problem(fn, "sst2")


@check("agreement_score", 3, "matches the reference on MiniLM probabilities of 64 AG News sentences (K=4)")
def _agreement_k4(fn):
    return _agreement_problem(fn, "agnews")


@check("agreement_score", 2, "scores 0 when the two models agree exactly, and leaves its inputs unchanged")
def _agreement_zero(fn):
    p_t, _ = _probabilities("agnews")
    given = p_t.copy()
    out = np.asarray(fn(given, given.copy()), dtype=np.float64)
    if out.shape != (len(p_t),) or not np.allclose(out, 0, atol=1e-7):
        return "identical teacher and DMM probabilities must score 0 on every row"
    if not np.array_equal(given, p_t):
        return "modified its input array in place"
    return None


# ---------------------------------------------------------------- ch. 5: punish_loss

PUNISH_SETTINGS = ((2.5, 0.3), (0.5, 0.7), (4.0, 0.0))
"""(temperature, alpha) pairs the loss is checked at: the AKD default, a sharpening T < 1, and CE switched off."""


def _prepare_punish() -> None:
    _distillation_batch("sst2")
    _distillation_batch("agnews")


checker("punish_loss", "punish_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, labels, "
        "temperature: float, alpha: float) -> torch.Tensor", _prepare_punish)


def _reference_punish(b, t, a):
    from .defenses.bedkd import distillation_loss

    return -distillation_loss(student_logits=b["student_logits"], teacher_logits=b["teacher_logits"],
                              student_hidden=b["student_hidden"], teacher_hidden=b["teacher_hidden"],
                              labels=b["labels"], temperature=t, alpha=a)


def _loss_parts(b, t) -> dict:
    import torch.nn.functional as F

    s, te = b["student_logits"], b["teacher_logits"]
    mask = b["attention_mask"].unsqueeze(-1).to(b["student_hidden"].dtype)
    sq = (b["student_hidden"] - b["teacher_hidden"]) ** 2
    return {
        "ce": F.cross_entropy(s, b["labels"]),
        "ce_t": F.cross_entropy(s / t, b["labels"]),
        "kl": F.kl_div(F.log_softmax(s / t, -1), F.softmax(te / t, -1), reduction="batchmean"),
        "kl_mean": F.kl_div(F.log_softmax(s / t, -1), F.softmax(te / t, -1), reduction="sum") / s.numel(),
        "kl_rev": F.kl_div(F.log_softmax(te / t, -1), F.softmax(s / t, -1), reduction="batchmean"),
        "kl_no_t": F.kl_div(F.log_softmax(s, -1), F.softmax(te, -1), reduction="batchmean"),
        "mse": F.mse_loss(b["student_hidden"], b["teacher_hidden"]),
        "mse_masked": (sq * mask).sum() / (mask.sum() * sq.shape[-1]),
    }


PUNISH_MISTAKES = {
    "the distillation loss itself: the sign is wrong (punish = minus the distillation loss)":
        lambda p, t, a: a * p["ce"] + (1 - a) * (p["kl"] + p["mse"]),
    "a T^2 factor on the KL term (the reference form has none)":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * (t * t * p["kl"] + p["mse"])),
    "KL with reduction='mean' (also divides by the number of classes) instead of 'batchmean'":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * (p["kl_mean"] + p["mse"])),
    "KL in the wrong direction: KL(student || teacher) instead of KL(teacher || student)":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * (p["kl_rev"] + p["mse"])),
    "KL on untempered logits (the temperature is ignored)":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * (p["kl_no_t"] + p["mse"])),
    "cross-entropy on tempered logits (the reference CE uses the raw logits)":
        lambda p, t, a: -(a * p["ce_t"] + (1 - a) * (p["kl"] + p["mse"])),
    "alpha and 1 - alpha swapped":
        lambda p, t, a: -((1 - a) * p["ce"] + a * (p["kl"] + p["mse"])),
    "(1 - alpha) applied to the KL term only, not to the MSE":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * p["kl"] + p["mse"]),
    "the MSE term left out":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * p["kl"]),
    "the KL term left out":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * p["mse"]),
    "the MSE averaged over real tokens only (the reference form averages over every element, padding included)":
        lambda p, t, a: -(a * p["ce"] + (1 - a) * (p["kl"] + p["mse_masked"])),
}
"""Known mistakes, as functions of the loss parts, T and alpha: a wrong value that matches one is named."""


def _batch_for_call(dataset: str, *, grad: bool) -> dict:
    """Fresh copies of the real batch (the student's tensors as leaves that require grad when `grad`)."""
    batch = {k: v.clone() for k, v in _distillation_batch(dataset).items()}
    if grad:
        batch["student_logits"].requires_grad_(True)
        batch["student_hidden"].requires_grad_(True)
    return batch


def _call_punish(fn, batch: dict, t: float, a: float):
    return fn(student_logits=batch["student_logits"], teacher_logits=batch["teacher_logits"],
              student_hidden=batch["student_hidden"], teacher_hidden=batch["teacher_hidden"],
              labels=batch["labels"], temperature=t, alpha=a)


def _close(x, y) -> bool:
    import torch

    return bool(torch.allclose(x.detach().double(), y.detach().double(), rtol=1e-4, atol=1e-6))


def _punish_problem(fn, dataset: str) -> str | None:
    import torch

    k = _distillation_batch(dataset)["student_logits"].shape[1]
    for t, a in PUNISH_SETTINGS:
        out = _call_punish(fn, _batch_for_call(dataset, grad=False), t, a)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            return f"{DATASET_NAMES[dataset]} (K={k}), T={t}, alpha={a}: returned {type(out).__name__}, expected a scalar tensor"
        out = out.detach().reshape(()).cpu()
        batch = _batch_for_call(dataset, grad=False)
        expected = _reference_punish(batch, t, a)
        if _close(out, expected):
            continue
        parts = _loss_parts(batch, t)
        for mistake, wrong in PUNISH_MISTAKES.items():
            value = wrong(parts, t, a)
            if _close(out, value) and not _close(value, expected):
                return (f"wrong on {DATASET_NAMES[dataset]} (K={k}) at T={t}, alpha={a}: looks like {mistake} "
                        f"(got {float(out):.6f}, expected {float(expected):.6f})")
        return (f"wrong on {DATASET_NAMES[dataset]} (K={k}) at T={t}, alpha={a}: got {float(out):.6f}, expected "
                f"-[a*CE(z_s, y) + (1-a)*(KL(softmax(z_t/T) || softmax(z_s/T)) + MSE(h_s, h_t))] = {float(expected):.6f}")
    return None


@check("punish_loss", 1, "returns a scalar tensor attached to the autograd graph")
def _punish_scalar(fn):
    import torch

    out = _call_punish(fn, _batch_for_call("sst2", grad=True), 2.5, 0.3)
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, expected a torch.Tensor (keep it in torch so it can be backpropagated)"
    if out.dim() != 0:
        return f"returned a tensor of shape {tuple(out.shape)}, expected a scalar (0-dim) tensor"
    if not out.requires_grad:
        return "the returned tensor does not require grad: it was detached from the student's outputs"
    return None


@check("punish_loss", 3, "equals -distillation_loss on MiniLM outputs of 16 SST-2 sentences (K=2), 3 (T, alpha) pairs")
def _punish_k2(fn):
    return _punish_problem(fn, "sst2")


@check("punish_loss", 3, "equals -distillation_loss on MiniLM outputs of 16 AG News sentences (K=4), 3 (T, alpha) pairs")
def _punish_k4(fn):
    return _punish_problem(fn, "agnews")


@check("punish_loss", 3, "its gradient w.r.t. the student's logits and hidden states is minus the distillation-loss gradient")
def _punish_gradient(fn):
    import torch

    for dataset in ("sst2", "agnews"):
        for t, a in PUNISH_SETTINGS[:2]:
            batch = _batch_for_call(dataset, grad=True)
            out = _call_punish(fn, batch, t, a)
            if not isinstance(out, torch.Tensor) or not out.requires_grad or out.numel() != 1:
                return "no gradient: the result is not a scalar tensor attached to the student's logits and hidden states"
            leaves = [batch["student_logits"], batch["student_hidden"]]
            try:
                got = torch.autograd.grad(out.reshape(()), leaves, allow_unused=True)
            except RuntimeError as err:
                return f"could not backpropagate through the result: {str(err).splitlines()[0]}"
            fresh = _batch_for_call(dataset, grad=True)
            want = torch.autograd.grad(_reference_punish(fresh, t, a), [fresh["student_logits"], fresh["student_hidden"]])
            for what, g, w in zip(("student_logits", "student_hidden"), got, want):
                if g is None:
                    return f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the loss does not depend on {what}"
                if _close(g, -w):
                    return (f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the gradient w.r.t. {what} equals the distillation loss's "
                            "gradient, so training would descend it: the punish loss must be its negation")
                if not _close(g, w):
                    cos = torch.nn.functional.cosine_similarity(g.flatten().double(), w.flatten().double(), dim=0)
                    return (f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the gradient w.r.t. {what} differs from minus the "
                            f"distillation-loss gradient (cosine similarity {float(cos):.3f})")
    return None


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
        raise NotebookError(f"{path}: not a notebook (invalid JSON at line {err.lineno}, column {err.colno}: {err.msg})") from None
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
        tree = ast.parse(_ipython_to_python(source))
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


# ---------------------------------------------------------------- ch. 6: threshold_at_frr

FRR_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@lru_cache(maxsize=None)
def _entropy_scores() -> tuple[float, ...]:
    """Prediction entropies (nats) of MiniLM on 64 real SST-2 and 64 AG News test sentences: STRIP-like scores."""
    scores = []
    for dataset in ("sst2", "agnews"):
        probs = _probabilities(dataset)[0]
        scores.extend((-(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)).tolist())
    return tuple(scores)


def _prepare_threshold() -> None:
    _entropy_scores()


checker("threshold_at_frr", "threshold_at_frr(scores, frr: float) -> float", _prepare_threshold)


def _threshold_problem(fn, scores, frr) -> str | None:
    from .defenses.strip import threshold_at_frr

    want = threshold_at_frr(np.asarray(scores), frr)
    got = fn(np.asarray(scores, dtype=float).copy(), frr)
    if not isinstance(got, (float, int, np.floating, np.integer)) or isinstance(got, bool):
        return f"threshold_at_frr(..., frr={frr}) returned {type(got).__name__}, expected a float"
    if not (got == want or np.isclose(float(got), want)):
        below = float(np.mean(np.asarray(scores) < float(got))) if np.isfinite(float(got)) else 1.0
        return (f"frr={frr} on {len(scores)} scores: got {float(got):.6g}, expected {want:.6g} (a share {below:.3f} of "
                "the scores falls strictly below yours; the threshold is the largest t with at most frr of the "
                "scores strictly below it)")
    return None


@check("threshold_at_frr", 1, "returns a float")
def _threshold_float(fn):
    got = fn(np.asarray(_entropy_scores()), 0.05)
    ok = isinstance(got, (float, np.floating)) or (isinstance(got, (int, np.integer)) and not isinstance(got, bool))
    return None if ok else f"returned {type(got).__name__}, expected a float"


@check("threshold_at_frr", 4, "matches STRIP's threshold on 128 real entropies at 7 FRR levels (0 to 1)")
def _threshold_levels(fn):
    for frr in FRR_LEVELS:
        problem = _threshold_problem(fn, _entropy_scores(), frr)
        if problem:
            return problem
    return None


@check("threshold_at_frr", 2, "handles ties and unsorted input (rejects only scores strictly below)")
def _threshold_ties(fn):
    scores = [0.3, 0.1, 0.1, 0.1, 0.7, 0.2, 0.9, 0.1, 0.4, 0.5]
    for frr in (0.1, 0.3, 0.45):
        problem = _threshold_problem(fn, scores, frr)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------- command line

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `grade` on the `bedkd` command's subparsers."""
    parser = subparsers.add_parser("grade", help="autograde a notebook's assignment cells against bedkd_core",
                                   description=DESCRIPTION)
    _add_arguments(parser)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb to grade (a chapter or its student copy)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Grade `args.notebook`; print the table (or JSON). 0 when grading ran, 2 when the notebook is unreadable."""
    from .data import DataError

    try:
        report = grade_notebook(args.notebook)
    except NotebookError as err:
        print(f"bedkd grade: error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"bedkd grade: error: the grading data could not be loaded: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedkd grade", description=DESCRIPTION)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
