"""Calling a graded function the same way in a student's notebook and in the grader's sandbox.

In a notebook the function is the student's own; in `bedkd grade` it is a proxy whose calls run in a
sandboxed process and which implements `value_and_grad` itself. Tests use `value_and_grad` so that one test
body serves both.
"""
from __future__ import annotations


def value_and_grad(fn, *, wrt: tuple[str, ...], **kwargs):
    """`fn(**kwargs)` (a scalar tensor) and the gradient of it with respect to each keyword named in `wrt`.

    The inputs named in `wrt` are detached copies with `requires_grad=True`; the gradients come back as a dict
    {name: tensor}, with None for an input the value does not depend on.
    """
    proxied = getattr(fn, "value_and_grad", None)
    if proxied is not None:
        return proxied(wrt=tuple(wrt), **kwargs)
    import torch

    missing = [name for name in wrt if name not in kwargs]
    if missing:
        raise TypeError(f"value_and_grad: wrt names {missing} are not among the keyword arguments")
    inputs = dict(kwargs)
    for name in wrt:
        inputs[name] = torch.as_tensor(kwargs[name]).detach().clone().requires_grad_(True)
    value = fn(**inputs)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        return value, {name: None for name in wrt}
    leaves = [inputs[name] for name in wrt]
    grads = torch.autograd.grad(value, leaves, allow_unused=True) if value.requires_grad else [None] * len(leaves)
    return value.detach(), dict(zip(wrt, grads))
