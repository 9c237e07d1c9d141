"""The grader's parent side: a sandboxed process per submission and proxies that call into it.

`Sandbox` starts `python -m bedkd_core.grading.sandbox` in its own session with hard rlimits, an empty scratch
folder as cwd and a stripped environment (no $BEDKD_GRADING_SEED), and kills its process group (SIGKILL) when a
request outlives its wall-clock limit. `Session` runs a submission's graded cells there, restarting the
process after a timeout or crash for the questions left. `Proxy` stands for a graded function in otter's tests.
"""
from __future__ import annotations

import ast
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import wire

PACKAGE_DIR = Path(__file__).resolve().parent.parent
FATAL = ("timeout", "memory", "refused", "killed", "crashed")
"""Statuses after which a graded function is not called again."""
ZERO = FATAL + ("not_implemented", "missing")
"""Statuses that score a question 0, whatever its tests said."""
MESSAGES = {"timeout": "timed out (killed at the time limit)", "memory": "ran out of memory (MemoryError)",
            "killed": "killed by a resource limit (CPU time or memory)",
            "not_implemented": "not implemented yet (raises NotImplementedError)",
            "missing": "no top-level function of this name in the notebook"}


@dataclass(frozen=True)
class Limits:
    """Per-call wall-clock seconds, the process's memory (MiB), CPU seconds and largest file (MiB)."""
    time_s: float = 60.0
    memory_mb: int = 4096
    startup_s: float = 120.0
    file_mb: int = 16

    def cpu_s(self) -> int:
        return int(max(120.0, 20 * self.time_s + self.startup_s))


class CallFailed(Exception):
    """A call of a graded function that did not return a value (the message is the student's feedback)."""


def _limits(limits: Limits):
    def apply() -> None:
        for name, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, limits.cpu_s()),
                            (resource.RLIMIT_AS, limits.memory_mb << 20),
                            (resource.RLIMIT_FSIZE, limits.file_mb << 20), (resource.RLIMIT_NPROC, 0)):
            resource.setrlimit(name, (value, value))  # hard = soft: the child cannot raise them back
    return apply


class Sandbox:
    """One child process; every request returns (reply, value) or a failure reply with its `kind`."""

    def __init__(self, *, limits: Limits, refuse_read: list[str]):
        self.limits = limits
        self.workdir = Path(tempfile.mkdtemp(prefix="bedkd-grade-"))
        scratch = self.workdir / "scratch"
        scratch.mkdir()
        self.capture = self.workdir / "output.txt"
        config = {"scratch": str(scratch), "capture": str(self.capture),
                  "refuse_read": [str(PACKAGE_DIR), str(PACKAGE_DIR.parent), *refuse_read],
                  "allow_read": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix} - {""})}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "TMPDIR": str(scratch),
               "PYTHONPATH": str(PACKAGE_DIR.parent), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bedkd_core.grading.sandbox", json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=scratch, env=env, close_fds=True,
            start_new_session=True, preexec_fn=_limits(limits))
        reply, _ = self._exchange(None, None, limits.startup_s)
        if not reply.get("ok"):
            self.close()
            raise RuntimeError(f"the grading sandbox did not start: {reply.get('error')}")

    def request(self, message: dict, value=None) -> tuple[dict, object]:
        return self._exchange(message, value, self.limits.time_s)

    def _exchange(self, message, value, seconds: float) -> tuple[dict, object]:
        try:
            if message is not None:
                wire.send(self.process.stdin.fileno(), message, value)
            return wire.receive(self.process.stdout.fileno(), deadline=time.monotonic() + seconds)
        except wire.Deadline:
            self.kill()
            return {"ok": False, "kind": "timeout", "error": f"over {seconds:g} s"}, None
        except (wire.Closed, BrokenPipeError):
            code = self.kill()
            if code in (-signal.SIGKILL, -signal.SIGXCPU):
                return {"ok": False, "kind": "killed", "error": "killed by a resource limit"}, None
            return {"ok": False, "kind": "crashed", "error": f"the process died (exit status {code})"}, None
        except (wire.WireError, ValueError, KeyError) as err:
            self.kill()
            return {"ok": False, "kind": "crashed", "error": f"unreadable reply ({err})"}, None

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int | None:
        """SIGKILL the whole process group (nothing in it can catch that); the exit code."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.wait()

    def output(self, limit: int = 2000) -> str:
        try:
            with open(self.capture, "rb") as handle:
                handle.seek(max(0, self.capture.stat().st_size - limit))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.alive():
            try:
                wire.send(self.process.stdin.fileno(), {"op": "quit"})
            except OSError:
                pass
        self.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def strip_magics(source: str) -> str:
    """The cell without IPython magics and shell lines (`%...`, `!...`)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def graded_cells(sources: list[str], names) -> tuple[list[tuple[int, str, list[str]]], int]:
    """The cells holding the last top-level definition of each name: (index, code, names it defines), and how
    many cells do not parse."""
    last, code, broken = {}, {}, 0
    for index, source in enumerate(sources):
        text = strip_magics(source)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            broken += 1
            continue
        code[index] = text
        for node in tree.body:
            bound = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bound = [node.name]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = [a.asname or a.name.split(".")[0] for a in node.names]
            for name in set(bound) & set(names):
                last[name] = index  # an imported name counts: the import runs, and is refused if it is the key
    cells = sorted(set(last.values()))
    return [(i, code[i], sorted(n for n, c in last.items() if c == i)) for i in cells], broken


@dataclass
class Session:
    """A submission's graded cells in a sandbox, restarted after a failure for the questions still to grade."""
    cells: list[tuple[int, str, list[str]]]
    names: list[str]
    limits: Limits
    refuse_read: list[str]
    status: dict = field(default_factory=dict)
    feedback: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    _box: Sandbox | None = None

    def _fail(self, names, reply: dict) -> None:
        kind = reply.get("kind", "error")
        for name in names:
            if name not in self.status or kind in FATAL:
                self.status[name] = kind
                refused = reply.get("refused") or []
                self.feedback[name] = (f"refused: {refused[0]}" if kind == "refused" and refused
                                       else MESSAGES.get(kind, reply.get("error", kind)))

    def _start(self) -> Sandbox:
        while True:
            box = Sandbox(limits=self.limits, refuse_read=self.refuse_read)
            for cell in list(self.cells):
                index, source, defines = cell
                reply, _ = box.request({"op": "exec", "cell": index, "source": source, "names": defines})
                if reply.get("refused") or reply.get("kind") == "memory":
                    self._fail(defines, {**reply, "kind": "refused" if reply.get("refused") else "memory"})
                if reply.get("kind") in ("timeout", "killed", "crashed"):
                    self._fail(defines, reply)
                    self.cells.remove(cell)
                    self._retire(box)
                    break
            else:
                return box

    def _retire(self, box: Sandbox) -> None:
        self.outputs.append(box.output())
        box.close()

    def call(self, name: str, args, kwargs, wrt=None):
        """The value of name(*args, **kwargs) computed in the sandbox, or CallFailed with the feedback."""
        if self.status.get(name) in FATAL:
            raise CallFailed(self.feedback[name])
        if self._box is None or not self._box.alive():
            self._box = self._start()
            if self.status.get(name) in FATAL:
                raise CallFailed(self.feedback[name])
        try:
            reply, value = self._box.request({"op": "call", "name": name, "wrt": wrt}, (list(args), kwargs))
        except wire.WireError as err:
            raise CallFailed(f"the test's input cannot be sent ({err})") from None
        if reply.get("refused"):
            reply = {**reply, "kind": "refused"}
        if not reply.get("ok"):
            self._fail([name], reply)
            if not self._box.alive():
                self._retire(self._box)
                self._box = None
            raise CallFailed(self.feedback.get(name) or reply.get("error", "failed"))
        return value

    def close(self) -> None:
        if self._box is not None:
            self._retire(self._box)
            self._box = None


class Proxy:
    """A graded function in the tests' environment: each call runs the student's function in the sandbox."""

    def __init__(self, session: Session, name: str):
        self._session, self.__name__ = session, name

    def __call__(self, *args, **kwargs):
        return self._session.call(self.__name__, args, kwargs)

    def value_and_grad(self, *, wrt, **kwargs):
        """The sandbox side of `calls.value_and_grad`: (value, {name: gradient or None})."""
        value, grads = self._session.call(self.__name__, (), kwargs, wrt=list(wrt))
        return value, dict(grads)

    def __repr__(self) -> str:
        return f"<graded function {self.__name__}>"
