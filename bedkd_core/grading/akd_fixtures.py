"""Real data and references for chapter 5's assignment (AKD): drawn distillation batches, the bounded punish
loss, the trust + punish loop on a linear head over frozen MiniLM features, and the mistakes feedback names."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .fixtures import HEADS, _forward, _minilm, distillation_batch, task


def drawn_distillation_batch(dataset: str, *, seed: int) -> dict:
    """As `distillation_batch`, for 16 test sentences drawn with `seed` (hidden tests pass `hidden_seed()`)."""
    return distillation_batch(dataset, seed=seed)


def punish_loss_reference(batch: dict, *, temperature: float, alpha: float, bound: float):
    """The `fixed` preset's punish loss on `batch`: −min(L, bound), L the distillation loss over real tokens."""
    import torch

    from ..defenses.bedkd import distillation_loss

    loss = distillation_loss(**{k: batch[k] for k in _LOSS_INPUTS}, temperature=temperature, alpha=alpha)
    return -torch.clamp(loss, max=bound)


_LOSS_INPUTS = ("student_logits", "teacher_logits", "student_hidden", "teacher_hidden", "labels", "attention_mask")


def close(x, y, *, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    import torch

    x, y = torch.as_tensor(x).detach().double(), torch.as_tensor(y).detach().double()
    return x.shape == y.shape and bool(torch.allclose(x, y, rtol=rtol, atol=atol))


def punish_loss_mistake(batch: dict, value, *, temperature: float, alpha: float, bound: float) -> str | None:
    """The known mistake a wrong punish-loss `value` on `batch` matches, said in words; None if none matches."""
    import torch
    import torch.nn.functional as F

    s, t, a, b = batch["student_logits"], batch["teacher_logits"], alpha, bound
    log_s, p_t = F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1)
    mask = batch["attention_mask"].unsqueeze(-1).to(s.dtype)
    sq = (batch["student_hidden"] - batch["teacher_hidden"]) ** 2
    ce, mse = F.cross_entropy(s, batch["labels"]), (sq * mask).sum() / (mask.sum() * sq.shape[-1])
    kl = F.kl_div(log_s, p_t, reduction="batchmean")
    loss = a * ce + (1 - a) * (kl + mse)
    wrong_losses = {
        "a T^2 factor on the KL term (the reference has none)": a * ce + (1 - a) * (temperature ** 2 * kl + mse),
        "KL averaged over classes too (reduction 'mean', not 'batchmean')":
            a * ce + (1 - a) * (F.kl_div(log_s, p_t, reduction="sum") / s.numel() + mse),
        "KL in the wrong direction (student's distribution first)":
            a * ce + (1 - a) * (F.kl_div(F.log_softmax(t / temperature, -1), log_s.exp(), reduction="batchmean")
                                + mse),
        "KL on untempered logits (the temperature is ignored)":
            a * ce + (1 - a) * (F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean") + mse),
        "cross-entropy on tempered logits (the reference's CE reads the raw logits)":
            a * F.cross_entropy(s / temperature, batch["labels"]) + (1 - a) * (kl + mse),
        "alpha and 1 - alpha swapped": (1 - a) * ce + a * (kl + mse),
        "(1 - alpha) weighs the KL term only, not the MSE": a * ce + (1 - a) * kl + mse,
        "the MSE term left out": a * ce + (1 - a) * kl,
        "the KL term left out": a * ce + (1 - a) * mse,
        "the MSE counts padding positions (it should average over real tokens only)":
            a * ce + (1 - a) * (kl + F.mse_loss(batch["student_hidden"], batch["teacher_hidden"])),
    }
    variants = {
        "the sign is wrong: it is the loss the trust pass descends": torch.clamp(loss, max=b),
        "the bound is not applied: the loss keeps growing past it": -loss,
        "the bound caps the loss from the wrong side": -torch.clamp(loss, min=b),
        **{mistake: -torch.clamp(wrong, max=b) for mistake, wrong in wrong_losses.items()},
    }
    right = -torch.clamp(loss, max=b)
    for mistake, wrong in variants.items():
        if close(value, wrong) and not close(wrong, right):
            return mistake
    return None


def _pooled(texts):
    """MiniLM's pooled features of `texts` in eval mode: what its classification heads read."""
    model, _ = _minilm()
    captured = []
    hook = model.classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        _forward(texts)
    finally:
        hook.remove()
    return captured[0].float().cpu()


@lru_cache(maxsize=None)
def akd_head_rows(dataset: str, *, seed: int, n_trust: int = 40, n_punish: int = 12) -> dict:
    """Real inputs of AKD on a linear head over MiniLM's frozen pooled features.

    Trust rows: `n_trust` train sentences with their labels (the defender's clean rows). Punish rows: `n_punish`
    non-target test sentences with a BadNets trigger inserted, labelled with the target (identified rows). The
    head (the teacher's, which the student starts from) is the seed-0 head with a bias drawn from `seed`.
    """
    import random

    import torch

    from ..attacks import AttackConfig, make_attack
    from ..data import NUM_CLASSES

    k, splits = NUM_CLASSES[dataset], task(dataset)
    attack = make_attack(config=AttackConfig(name="badnets"), dataset=dataset)
    target = attack.config.target_label
    rng = np.random.default_rng(seed)
    trust_rows = rng.choice(len(splits.train), size=n_trust, replace=False)
    test_labels = np.asarray(splits.test["label"])
    punish_rows = rng.choice(np.flatnonzero(test_labels != target), size=n_punish, replace=False)
    trigger_rng = random.Random(seed)
    punish_texts = [attack.trigger(splits.test[int(i)]["text"], trigger_rng) for i in punish_rows]
    weight = _minilm()[0].classifier.weight[HEADS[(k, 0)]].detach().float().cpu().clone()
    bias = 0.5 * torch.randn(k, generator=torch.Generator().manual_seed(seed))
    return {"weight": weight, "bias": bias,
            "trust_features": _pooled([splits.train[int(i)]["text"] for i in trust_rows]),
            "trust_labels": torch.tensor([int(splits.train[int(i)]["label"]) for i in trust_rows]),
            "punish_features": _pooled(punish_texts),
            "punish_labels": torch.full((n_punish,), target, dtype=torch.long)}


def reference_akd_head(*, weight, bias, trust_features, trust_labels, punish_features, punish_labels, epochs: int,
                       batch_size: int, temperature: float, alpha: float, bound: float, learning_rate: float) -> dict:
    """The reference AKD loop on a linear head over frozen features: `bedkd._distill_step` with one Adam.

    Each epoch trust-distils on the trust rows, then punishes on the punish rows, both cut in order into batches of
    `batch_size`. Returns the head's final weight and bias and each step's signed loss, in the order run.
    """
    import copy
    from types import SimpleNamespace

    import torch

    from ..defenses.bedkd import _Batch, _distill_step, make_config

    teacher = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        teacher.weight.copy_(torch.as_tensor(weight))
        teacher.bias.copy_(torch.as_tensor(bias))
    student = copy.deepcopy(teacher)

    def forward(*, features, output_hidden_states: bool):
        return SimpleNamespace(logits=student(features), hidden_states=(features,))

    def batches(features, labels) -> list:
        features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long()
        with torch.no_grad():
            logits = teacher(features)
        return [_Batch({"features": features[i:i + batch_size]}, labels[i:i + batch_size], None,
                       (logits[i:i + batch_size], features[i:i + batch_size]))
                for i in range(0, len(labels), batch_size)]

    config = make_config(alpha=alpha, punish_bound=bound, mask_padding=False, temperature_akd=temperature)
    step = dict(scaler=torch.amp.GradScaler("cuda", enabled=False), temperature=temperature, config=config)
    trust, punish = batches(trust_features, trust_labels), batches(punish_features, punish_labels)
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    losses = []
    for _ in range(epochs):
        losses += [_distill_step(forward, optimizer, b, **step, sign=1) for b in trust]
        losses += [_distill_step(forward, optimizer, b, **step, sign=-1) for b in punish]
    return {"weight": student.weight.detach().clone(), "bias": student.bias.detach().clone(), "losses": losses}


def _batch_count(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


def binding_bound(case: dict, *, margin: float = 1e-3, **settings) -> float:
    """A punish bound under which the reference run of `case` skips some punish steps and takes others, every
    punish loss at least `margin` away from it (so that rounding cannot flip a decision); failing that, half the
    smallest punish loss, under which every punish step is skipped."""
    n_trust = _batch_count(len(case["trust_labels"]), settings["batch_size"])
    per_epoch = n_trust + _batch_count(len(case["punish_labels"]), settings["batch_size"])

    def punish_losses(bound: float) -> np.ndarray:
        losses = reference_akd_head(**case, **settings, bound=bound)["losses"]
        return -np.array([x for i, x in enumerate(losses) if i % per_epoch >= n_trust])

    free = np.unique(punish_losses(1e9))
    middles = (free[1:] + free[:-1]) / 2
    for bound in middles[np.argsort(np.abs(np.arange(len(middles)) - len(middles) / 2))]:
        seen = punish_losses(float(bound))
        if (seen > bound).any() and (seen <= bound).any() and np.abs(seen - bound).min() >= margin:
            return float(bound)
    return float(free.min()) / 2


def akd_head_mistake(got, want: dict, *, n_trust: int, n_punish: int, bound: float) -> str | None:
    """What is wrong with an AKD run `got` (weight, bias, losses) against the reference's `want`, said in words;
    None when they agree. `n_trust` and `n_punish` are the batches per epoch of each pass."""
    import torch

    if not isinstance(got, dict) or not {"weight", "bias", "losses"} <= set(got):
        return "return a dict with keys 'weight', 'bias' and 'losses'"
    losses = [float(x) for x in got["losses"]]
    if len(losses) != len(want["losses"]):
        return (f"{len(losses)} losses logged, expected one per batch run: {n_trust} trust and {n_punish} punish "
                f"batches per epoch, {len(want['losses'])} in all")
    for i, (mine, right) in enumerate(zip(losses, want["losses"])):
        if close(mine, right, rtol=1e-4, atol=1e-5):
            continue
        epoch, j = divmod(i, n_trust + n_punish)
        where = f"trust batch {j + 1}" if j < n_trust else f"punish batch {j - n_trust + 1}"
        where += f" of epoch {epoch + 1}"
        if i == 0:
            why = "the very first batch: check the loss (the student starts as the teacher's copy)"
        elif close(mine, -right, rtol=1e-4, atol=1e-5):
            why = "its sign is wrong: trust batches log +L, punish batches -L"
        elif j >= n_trust and -right > bound:
            why = "this punish batch's L is past the bound: check what is logged and done for such a batch"
        elif (i - 1) % (n_trust + n_punish) >= n_trust and -want["losses"][i - 1] > bound:
            why = "it follows a punish batch whose L was past the bound: check what such a batch does"
        elif i == 1:
            why = ("the first batch matched, where KL is zero (student = teacher); check the KL term, the one "
                   "Adam step over weight and bias, and that the teacher stays the initial head")
        else:
            why = "the steps before it moved the head differently (check the update rule and the frozen teacher)"
        return f"you logged {mine:.6f} for {where}, which is not the reference's: {why}"
    for name in ("weight", "bias"):
        mine = torch.as_tensor(got[name])
        if mine.shape != want[name].shape:
            return f"the {name} has shape {tuple(mine.shape)}, expected {tuple(want[name].shape)}"
        if not close(mine, want[name], rtol=1e-4, atol=1e-5):
            return (f"every logged loss matches, but the final {name} differs from the reference's: "
                    "check the last step of the last epoch and that both weight and bias are trained")
    return None
