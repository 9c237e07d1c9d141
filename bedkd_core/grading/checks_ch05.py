"""Chapter 5's graded assignment: punish_loss (minus the distillation loss, on real MiniLM outputs)."""
from __future__ import annotations

from .engine import check, checker
from .fixtures import DATASET_NAMES, distillation_batch

PUNISH_SETTINGS = ((2.5, 0.3), (0.5, 0.7), (4.0, 0.0))
"""(temperature, alpha) pairs the loss is checked at: the AKD default, a sharpening T < 1, and CE switched off."""


def _prepare_punish() -> None:
    distillation_batch("sst2")
    distillation_batch("agnews")


checker("punish_loss", "punish_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, labels, "
        "temperature: float, alpha: float) -> torch.Tensor", _prepare_punish)


def _reference_punish(b, t, a):
    from ..defenses.bedkd import distillation_loss

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
    batch = {k: v.clone() for k, v in distillation_batch(dataset).items()}
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

    k = distillation_batch(dataset)["student_logits"].shape[1]
    for t, a in PUNISH_SETTINGS:
        out = _call_punish(fn, _batch_for_call(dataset, grad=False), t, a)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            return (f"{DATASET_NAMES[dataset]} (K={k}), T={t}, alpha={a}: returned {type(out).__name__}, "
                    "expected a scalar tensor")
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
                "-[a*CE(z_s, y) + (1-a)*(KL(softmax(z_t/T) || softmax(z_s/T)) + MSE(h_s, h_t))] = "
                f"{float(expected):.6f}")
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


@check("punish_loss", 3,
       "equals -distillation_loss on MiniLM outputs of 16 SST-2 sentences (K=2), 3 (T, alpha) pairs")
def _punish_k2(fn):
    return _punish_problem(fn, "sst2")


@check("punish_loss", 3,
       "equals -distillation_loss on MiniLM outputs of 16 AG News sentences (K=4), 3 (T, alpha) pairs")
def _punish_k4(fn):
    return _punish_problem(fn, "agnews")


@check("punish_loss", 3,
       "its gradient w.r.t. the student's logits and hidden states is minus the distillation-loss gradient")
def _punish_gradient(fn):
    import torch

    for dataset in ("sst2", "agnews"):
        for t, a in PUNISH_SETTINGS[:2]:
            batch = _batch_for_call(dataset, grad=True)
            out = _call_punish(fn, batch, t, a)
            if not isinstance(out, torch.Tensor) or not out.requires_grad or out.numel() != 1:
                return ("no gradient: the result is not a scalar tensor attached to the student's logits and "
                        "hidden states")
            leaves = [batch["student_logits"], batch["student_hidden"]]
            try:
                got = torch.autograd.grad(out.reshape(()), leaves, allow_unused=True)
            except RuntimeError as err:
                return f"could not backpropagate through the result: {str(err).splitlines()[0]}"
            fresh = _batch_for_call(dataset, grad=True)
            want = torch.autograd.grad(_reference_punish(fresh, t, a),
                                       [fresh["student_logits"], fresh["student_hidden"]])
            for what, g, w in zip(("student_logits", "student_hidden"), got, want):
                if g is None:
                    return f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the loss does not depend on {what}"
                if _close(g, -w):
                    return (f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the gradient w.r.t. {what} equals the "
                            "distillation loss's gradient, so training would descend it: the punish loss must be "
                            "its negation")
                if not _close(g, w):
                    cos = torch.nn.functional.cosine_similarity(g.flatten().double(), w.flatten().double(), dim=0)
                    return (f"{DATASET_NAMES[dataset]}, T={t}, alpha={a}: the gradient w.r.t. {what} differs from "
                            f"minus the distillation-loss gradient (cosine similarity {float(cos):.3f})")
    return None
