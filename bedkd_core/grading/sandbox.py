"""The grader's sandbox child: `python -m bedkd_core.grading.sandbox CONFIG_JSON`, started by `runner.Sandbox`.

It imports numpy and torch, forgets bedkd_core, installs an audit hook (which cannot be removed) and only then
runs student code: the cells the parent sends, each in one shared fresh namespace, then calls of the graded
functions. Requests and replies travel on the pipes it was started with (`wire` frames, no pickles); the
student's prints go to a capture file. The hook refuses importing bedkd_core or otter, ctypes (every ctypes
event), starting processes, sockets, writing outside the scratch folder, reading the paths the parent names
(the package, the repository, the tests, other submissions) and other processes' /proc entries.
"""
from __future__ import annotations

import builtins
import json
import os
import sys

from .calls import value_and_grad
from .wire import Closed, WireError, decode, encode, receive, send

REFUSED_MODULES = ("bedkd_core", "otter", "ctypes", "_ctypes", "_posixsubprocess", "multiprocessing")
REFUSED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn",
                  "os.spawn", "os.kill", "os.killpg", "pty.spawn", "socket.connect", "socket.bind",
                  "socket.sendto", "socket.sendmsg", "os.symlink", "os.link", "resource.setrlimit",
                  "resource.prlimit", "sys.unraisablehook", "os.startfile", "webbrowser.open")
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
               "os.utime": 1, "os.rename": 2, "os.setxattr": 1, "os.removexattr": 1, "shutil.rmtree": 1,
               "shutil.copyfile": 2, "shutil.move": 2, "os.chflags": 1, "os.lchmod": 1}
"""Events that change the file named by their first (or first two) arguments: allowed inside scratch only."""
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class Refused(PermissionError):
    """What the audit hook raises: an action graded code may not take."""


def install_hook(*, scratch: str, refuse_read: list[str], allow_read: list[str], log: list[str]) -> None:
    """Add the audit hook; every refusal is also appended to `log` (the parent reports it)."""
    scratch = os.path.realpath(scratch)
    refuse_read = [os.path.realpath(p) for p in refuse_read]
    allow_read = [os.path.realpath(p) for p in allow_read]
    own = str(os.getpid())
    realpath, fspath, isabs, getcwd, join = (os.path.realpath, os.fspath, os.path.isabs, os.getcwd,
                                             os.path.join)

    def resolve(path) -> str | None:
        if isinstance(path, int):
            return None
        path = fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return realpath(path if isabs(path) else join(getcwd(), path))

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    def refuse(what: str):
        log.append(what)
        raise Refused(f"refused by the grader's sandbox: {what}")

    def readable(path: str) -> bool:
        if path.startswith("/proc/"):
            pid = path.split("/")[2]
            return not pid.isdigit() or pid == own
        if any(inside(path, p) for p in allow_read):
            return True
        return not any(inside(path, p) for p in refuse_read)

    def hook(event: str, args) -> None:
        if event == "import":
            name = str(args[0])
            if any(name == m or name.startswith(m + ".") for m in REFUSED_MODULES):
                refuse(f"import {name}")
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            if mode is None and not isabs(fspath(path)):
                refuse("os.open with a relative path")
            where = resolve(path)
            if (flags or 0) & WRITE_FLAGS or (mode and any(c in str(mode) for c in "wax+")):
                if not inside(where, scratch) and where != "/dev/null":
                    refuse(f"writing {where}")
            elif not readable(where):
                refuse(f"reading {where}")
        elif event.startswith("ctypes.") or event in REFUSED_EVENTS:
            refuse(event)
        elif event in PATH_EVENTS:
            for path in args[:PATH_EVENTS[event]]:
                where = resolve(path)
                if where is not None and not inside(where, scratch):
                    refuse(f"{event} {where}")

    sys.addaudithook(hook)


def _prepare() -> None:
    """Import what graded code may use, while nothing is refused yet; then forget bedkd_core and otter."""
    import numpy

    sample = {"x": numpy.zeros(2), "s": numpy.float64(1.0)}
    try:
        import torch

        torch.set_num_threads(1)
        sample["t"] = torch.zeros(2, requires_grad=True)
        value_and_grad(lambda *, t: (t * t).sum(), wrt=("t",), t=sample["t"])
        step = torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first step imports torch._dynamo,
        step.param_groups[0]["params"][0].grad = torch.ones(1)          # which loads ctypes: do it before the hook
        step.step()
    except ImportError:  # pragma: no cover
        pass
    decode(*encode(sample))  # loads what the wire needs (np.load's zipfile, ...) before the hook
    try:
        import _posixsubprocess

        def fork_exec(*args, **kwargs):
            raise Refused("refused by the grader's sandbox: starting a process")

        _posixsubprocess.fork_exec = fork_exec  # it raises no audit event of its own
    except ImportError:  # pragma: no cover
        pass
    for name in [m for m in sys.modules if m.split(".")[0] in ("bedkd_core", "otter")]:
        if name != __name__:
            del sys.modules[name]


def _failure(err: BaseException, log: list[str]) -> dict:
    if log or isinstance(err, Refused):
        kind = "refused"
    elif isinstance(err, NotImplementedError):
        kind = "not_implemented"
    elif isinstance(err, MemoryError):
        kind = "memory"
    else:
        kind = "error"
    text = str(err).strip().splitlines()[:1]
    return {"ok": False, "kind": kind, "error": f"{type(err).__name__}: {text[0] if text else ''}"[:300]}


def _call(namespace: dict, request: dict, value):
    fn = namespace.get(request["name"])
    if not callable(fn):
        raise NameError(f"{request['name']} is not defined")
    args, kwargs = value
    if request.get("wrt") is not None:
        return value_and_grad(fn, wrt=tuple(request["wrt"]), **kwargs)
    return fn(*args, **kwargs)


def serve(*, fd_in: int, fd_out: int, log: list[str]) -> None:
    """Answer requests until the parent says quit (or closes the pipe)."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    send(fd_out, {"ok": True, "ready": True})
    while True:
        try:
            request, value = receive(fd_in)
        except Closed:
            return
        del log[:]
        result = None
        try:
            if request["op"] == "quit":
                return
            if request["op"] == "exec":
                exec(compile(request["source"], f"<cell {request.get('cell')}>", "exec"), namespace)
                reply = {"ok": True}
            else:
                result = _call(namespace, request, value)
                reply = {"ok": True}
        except BaseException as err:  # noqa: BLE001 - student code may raise anything, SystemExit too
            reply, result = _failure(err, log), None
        reply["refused"] = list(log)
        reply["defined"] = sorted(n for n in request.get("names", []) if callable(namespace.get(n)))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            send(fd_out, reply, result)
        except (WireError, MemoryError, RecursionError, TypeError, ValueError) as err:
            send(fd_out, {**_failure(err, log), "defined": reply["defined"], "refused": list(log)})


def main() -> None:
    config = json.loads(sys.argv[1])
    fd_in, fd_out = os.dup(0), os.dup(1)
    capture = os.open(config["capture"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    os.close(capture)
    os.close(null)
    _prepare()
    os.chdir(config["scratch"])
    log: list[str] = []
    install_hook(scratch=config["scratch"], refuse_read=config["refuse_read"],
                 allow_read=config["allow_read"], log=log)
    serve(fd_in=fd_in, fd_out=fd_out, log=log)


if __name__ == "__main__":
    main()
