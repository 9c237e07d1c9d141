"""The grader's wire format between the parent and the sandbox: plain values and arrays, never pickles.

A message is a JSON header plus an .npz of arrays, each framed by its length. Values allowed across the
boundary: None, bool, int, float, str, lists, tuples, dicts with str keys, numpy arrays and scalars, torch
tensors (sent as arrays tagged with `requires_grad`). Anything else is a `WireError`.
"""
from __future__ import annotations

import io
import json
import os
import select
import struct
import time

import numpy as np

MAGIC = b"BKD1"
MAX_BYTES = 256 << 20
"""The largest header or payload either side reads: a bigger one is an error, not an allocation."""


class WireError(ValueError):
    """A value that cannot cross the sandbox boundary, or a message that is not well formed."""


class Deadline(Exception):
    """The other side did not answer in time."""


class Closed(Exception):
    """The other side closed its end (it exited or was killed)."""


def encode(value) -> tuple[bytes, bytes]:
    """(header, payload) for `value`: the JSON tree and the npz of its arrays."""
    arrays: dict[str, np.ndarray] = {}
    tree = _to_tree(value, arrays, depth=0)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return json.dumps(tree).encode(), buffer.getvalue()


def decode(header: bytes, payload: bytes):
    """The value `encode` wrote; arrays are loaded with allow_pickle=False."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return _from_tree(json.loads(header), arrays, depth=0)


def _to_tree(value, arrays: dict, *, depth: int):
    if depth > 32:
        raise WireError("values nest more than 32 levels deep")
    if isinstance(value, np.generic):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        if arrays[key].dtype.kind not in "biufc":
            raise WireError(f"numpy scalars of dtype {arrays[key].dtype} cannot be graded")
        return {"__scalar__": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if type(value) in (type(None), bool, int, float, str) else _builtin(value)
    if isinstance(value, np.ndarray):
        return _array(value, arrays, tensor=False, grad=False)
    if type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter"):
        array = value.detach().cpu()
        if array.dtype.is_floating_point and array.dtype not in _NUMPY_FLOATS:
            array = array.float()
        return _array(array.numpy(), arrays, tensor=True, grad=bool(value.requires_grad))
    if isinstance(value, (list, tuple)):
        items = [_to_tree(item, arrays, depth=depth + 1) for item in value]
        return items if type(value) is list else {"__tuple__": items}
    if isinstance(value, dict):
        if not all(type(key) is str for key in value):
            raise WireError("dict keys must be strings")
        return {"__dict__": {key: _to_tree(item, arrays, depth=depth + 1) for key, item in value.items()}}
    raise WireError(f"a value of type {type(value).__name__} cannot be graded (use numbers, strings, lists, "
                    "dicts, numpy arrays or torch tensors)")


_NUMPY_FLOATS = ()
try:  # torch is optional on the parent's side of the wire
    import torch as _torch

    _NUMPY_FLOATS = (_torch.float16, _torch.float32, _torch.float64)
except ImportError:  # pragma: no cover
    _torch = None


def _builtin(value):
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    raise WireError(f"unexpected value {type(value).__name__}")


def _array(array: np.ndarray, arrays: dict, *, tensor: bool, grad: bool) -> dict:
    if array.dtype == object or array.dtype.kind not in "biufc":
        raise WireError(f"arrays of dtype {array.dtype} cannot be graded")
    key = f"a{len(arrays)}"
    arrays[key] = np.require(array, requirements="C")  # np.ascontiguousarray would make a 0-dim array 1-dim
    return {"__array__": key, "tensor": tensor, "requires_grad": grad}


def _from_tree(tree, arrays: dict, *, depth: int):
    if depth > 33:
        raise WireError("message nests too deep")
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_from_tree(item, arrays, depth=depth + 1) for item in tree]
    if not isinstance(tree, dict) or len(tree) not in (1, 3):
        raise WireError("malformed message")
    if "__tuple__" in tree:
        return tuple(_from_tree(item, arrays, depth=depth + 1) for item in tree["__tuple__"])
    if "__dict__" in tree:
        return {str(k): _from_tree(v, arrays, depth=depth + 1) for k, v in tree["__dict__"].items()}
    if "__scalar__" in tree:
        return arrays[tree["__scalar__"]][()]
    if "__array__" in tree:
        array = arrays[tree["__array__"]]
        if not tree.get("tensor"):
            return array
        if _torch is None:  # pragma: no cover
            raise WireError("a tensor arrived but torch is not installed")
        tensor = _torch.from_numpy(array.copy())
        return tensor.requires_grad_(True) if tree.get("requires_grad") and tensor.is_floating_point() else tensor
    raise WireError("malformed message")


# ---------------------------------------------------------------- framing over pipes

def send(fd: int, message: dict, value=None) -> None:
    """Write one frame: the control dict (JSON), then `value` encoded."""
    header, payload = encode(value)
    control = json.dumps(message).encode()
    parts = [MAGIC]
    for part in (control, header, payload):
        parts += [struct.pack("<Q", len(part)), part]
    data = b"".join(parts)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def receive(fd: int, *, deadline: float | None = None) -> tuple[dict, object]:
    """Read one frame: (control dict, decoded value). Raises Deadline past `deadline` (time.monotonic)."""
    if _read(fd, 4, deadline) != MAGIC:
        raise WireError("not a grader message")
    parts = []
    for _ in range(3):
        (size,) = struct.unpack("<Q", _read(fd, 8, deadline))
        if size > MAX_BYTES:
            raise WireError(f"a message part of {size} bytes is over the limit")
        parts.append(_read(fd, size, deadline))
    control = json.loads(parts[0])
    if not isinstance(control, dict):
        raise WireError("malformed message")
    return control, decode(parts[1], parts[2])


def _read(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise Deadline()
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise Closed()
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
