"""RAP, Robustness-Aware Perturbations (Yang et al., EMNLP 2021): an inference-time input filter.

RAP builds a word-based perturbation that clean inputs are sensitive to and triggered inputs are not:
1. A rare word (`rap_trigger`, one vocabulary token) is prepended to inputs. Only its word embedding is trained
   (on a private copy of the victim), on clean rows of the protected label that the victim classifies
   correctly, so that prepending it lowers the protected label's probability by between `prob_range[0]` and
   `prob_range[1]`:  loss = mean(relu(lo − Δp) + relu(Δp − hi)),  Δp = p(y*|x) − p(y*|RAP ⊕ x).
   RAP's reference code takes plain gradient steps (lr 1e-2) over a large held-out set; with this book's small
   clean budget and a victim whose softmax is saturated those steps barely move the word (on the quick SST-2
   BadNets victim, 20 such steps left the mean clean Δp at 0.002), so the default `optimizer="adam"` takes Adam steps on that one row instead;
   `optimizer="sgd"` is the reference update.
2. A triggered input sits deep in the backdoor's region: the RAP word barely moves it, so its Δp is small.
3. Only inputs the victim classifies as the protected label can be attacks, so only those are checked:
   reject(x) = [pred(x) = y*] and [Δp(x) < t]. t is set on held-out clean rows so that a share `frr` (1%) of
   ALL held-out clean rows is rejected.

The protected label y*. RAP assumes the defender knows which label the attacker wants (the label that must be
protected, e.g. "not toxic"), so the harness (`bedkd run`, `bedkd compare`) passes the attack's target as
`protected_label` (`defenses.with_threat_model`); it never reads poison flags, unlike OpenBackdoor's RAP. Called
without it, `rap()` infers the label from the suspect training set's label distribution: dirty-label poisoning
relabels rows of other classes to the target, so the target's share among the suspect labels exceeds its share
in the defender's own clean set by about the poison rate. The class with the largest excess is taken. This
breaks down for clean-label attacks (no relabelling) and whenever the clean set is not drawn like the training
set: this library's clean pool is balanced per class, so on OLID (one third offensive) the inference would pick
the wrong class.

The RAP word is `mb` by default, not OpenBackdoor's `cf`, because `cf` is one of this book's BadNets trigger
words: training its embedding would edit the attack's own trigger. The returned model is the victim itself;
the RAP copy is used only inside `reject`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..data import DataError
from ..options import option
from ..training import predict_proba, seed_everything, tokenize
from ._common import copy_model, held_out_split, per_class_rows, rows_summary
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class RAPConfig(DefenseConfig):
    rap_trigger: str = option("mb", "the RAP word (one vocabulary token)")
    prob_range: tuple[float, float] = option(
        (0.1, 0.3),
        "Wanted drop of the protected label's probability on clean inputs (OpenBackdoor: [-0.1, -0.3]).")
    epochs: int = option(
        10,
        "training epochs (finetune, fine_pruning: fine-tuning; nad: distillation; rap: RAP-word training)")
    learning_rate: float = option(1e-2, "learning rate (Adam/AdamW; rap: the RAP word's gradient step)")
    optimizer: Literal["adam", "sgd"] = option(
        "adam",
        '"adam" (Adam steps on the RAP word\'s row) or "sgd" (the reference: row -= lr · gradient).')
    train_per_class: int = option(
        80,
        "Clean rows per class set aside for training; those of the protected label are used.")
    threshold_per_class: int = option(320, "held-out clean rows per class for the threshold")
    frr: float = option(0.01, "false rejection rate on clean rows that sets the threshold")
    protected_label: int | None = option(
        None,
        "The label to protect; None = infer it from the suspect set's label distribution (see the module "
        "doc).")
    batch_size: int = option(16, "batch size")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(train_per_class=64, threshold_per_class=128)}


def check(data: DefenderData, config: RAPConfig) -> None:
    held_out_split(data, per_class=config.threshold_per_class, seed=config.seed, defense="rap",
                   reserve_per_class=config.train_per_class)


def infer_protected_label(suspect_labels, clean_labels, num_classes: int) -> tuple[int, dict]:
    """The class whose share of the suspect labels most exceeds its share of the clean labels."""
    suspect = np.bincount(np.asarray(suspect_labels, dtype=int), minlength=num_classes) / max(len(suspect_labels), 1)
    clean = np.bincount(np.asarray(clean_labels, dtype=int), minlength=num_classes) / max(len(clean_labels), 1)
    excess = suspect - clean
    return int(np.argmax(excess)), {str(c): round(float(e), 4) for c, e in enumerate(excess)}


def with_trigger(texts: list[str], trigger: str) -> list[str]:
    return [f"{trigger} {t}" for t in texts]


def _protected_prob(model, tokenizer, texts, label, config) -> np.ndarray:
    return predict_proba(model, tokenizer, list(texts), max_length=config.max_length)[:, label]


def train_rap_embedding(model, tokenizer, texts: list[str], *, label: int, config: RAPConfig) -> list[float]:
    """Train, in place on `model`, the input embedding of `config.rap_trigger` only; per-epoch mean loss."""
    ids = tokenizer(config.rap_trigger, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise DataError(f"the RAP trigger {config.rap_trigger!r} is {len(ids)} tokens for this tokenizer; pick a word "
                        "that is one vocabulary token")
    token = ids[0]
    embedding = model.get_input_embeddings()
    for p in model.parameters():
        p.requires_grad_(False)
    embedding.weight.requires_grad_(True)
    if config.optimizer not in ("adam", "sgd"):
        raise DataError(f"rap: optimizer must be 'adam' or 'sgd', got {config.optimizer!r}")
    lo, hi = config.prob_range
    base = torch.as_tensor(_protected_prob(model, tokenizer, texts, label, config))
    rng = np.random.default_rng(config.seed)
    history = []
    m = torch.zeros_like(embedding.weight[token])
    v = torch.zeros_like(m)
    beta1, beta2, step = 0.9, 0.999, 0
    model.eval()  # no dropout: the perturbation is fitted to the deterministic model it will be used with
    try:
        for _ in range(config.epochs):
            losses = []
            order = rng.permutation(len(texts))
            for start in range(0, len(order), config.batch_size):
                rows = order[start : start + config.batch_size].tolist()
                batch = tokenize(tokenizer, with_trigger([texts[i] for i in rows], config.rap_trigger), config.max_length)
                p_rap = torch.softmax(model(**batch).logits, dim=-1)[:, label]
                delta = base[rows].to(p_rap.device) - p_rap
                loss = (torch.relu(lo - delta) + torch.relu(delta - hi)).mean()
                loss.backward()
                with torch.no_grad():
                    grad = embedding.weight.grad[token]
                    if config.optimizer == "sgd":
                        embedding.weight[token] -= config.learning_rate * grad
                    else:
                        step += 1
                        m.mul_(beta1).add_(grad, alpha=1 - beta1)
                        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                        update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + 1e-8)
                        embedding.weight[token] -= config.learning_rate * update
                embedding.weight.grad = None
                losses.append(loss.item())
            history.append(float(np.mean(losses)))
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
    return history


def rap_threshold(delta: np.ndarray, checked: np.ndarray, frr: float) -> float:
    """The largest t such that at most a share `frr` of ALL rows is rejected by [checked and Δp < t]."""
    values = np.sort(np.asarray(delta, dtype=float)[np.asarray(checked, dtype=bool)])
    k = int(np.floor(frr * len(delta)))  # how many clean rows may be rejected
    if len(values) == 0:
        return float("-inf")
    if k <= 0:
        return float(values[0])  # nothing lies strictly below the smallest value
    return float(values[k]) if k < len(values) else float("inf")


def rap(*, victim, data: DefenderData, config: RAPConfig) -> DefenseResult:
    """Fit the RAP word's embedding and the Δp threshold on clean rows; return the victim with `reject`."""
    held, source_name, used = held_out_split(data, per_class=config.threshold_per_class, seed=config.seed,
                                             defense="rap", reserve_per_class=config.train_per_class)
    if config.protected_label is not None:
        if not 0 <= config.protected_label < data.num_classes:
            raise DataError(f"protected label {config.protected_label} does not exist (0..{data.num_classes - 1})")
        label, excess = config.protected_label, None
    else:
        label, excess = infer_protected_label(data.suspect["label"], data.clean["label"], data.num_classes)
    train_rows = per_class_rows(data.clean["label"], per_class=config.train_per_class, num_classes=data.num_classes,
                                seed=config.seed + 1, defense="rap", purpose="training the RAP word", exclude=used)
    train = data.clean.select(train_rows)
    train_texts = [t for t, y in zip(train["text"], train["label"]) if y == label]
    tokenizer = victim.tokenizer
    train_pred = predict_proba(victim.model, tokenizer, train_texts, max_length=config.max_length).argmax(1)
    train_texts = [t for t, p in zip(train_texts, train_pred) if p == label]  # RAP trains on correctly classified rows
    if not train_texts:
        raise DataError(f"rap: none of the clean training rows of label {label} is classified as {label}")
    seed_everything(config.seed)
    rap_model = copy_model(victim.model)
    history = train_rap_embedding(rap_model, tokenizer, train_texts, label=label, config=config)

    def scores(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(Δp of the protected label, whether the victim predicts the protected label) per text."""
        texts = list(texts)
        probs = predict_proba(rap_model, tokenizer, texts, max_length=config.max_length)
        p_rap = _protected_prob(rap_model, tokenizer, with_trigger(texts, config.rap_trigger), label, config)
        return probs[:, label] - p_rap, probs.argmax(1) == label

    clean_delta, clean_checked = scores(list(held["text"]))
    # reject when checked and Δp < t: choose t so that a share frr of ALL held-out clean rows is rejected
    threshold = rap_threshold(clean_delta, clean_checked, config.frr)

    def reject(texts: list[str]) -> np.ndarray:
        delta, checked = scores(texts)
        return checked & (delta < threshold)

    def score(texts: list[str]) -> np.ndarray:
        return scores(texts)[0]

    rows = rows_summary(clean=len(train_rows) + (len(held) if source_name == "clean" else 0),
                        dev=len(held) if source_name == "dev" else 0)
    summary = {"defender_rows": rows, "protected_label": label, "protected_label_given": config.protected_label is not None,
               "label_share_excess": excess, "threshold": threshold, "threshold_source": source_name,
               "threshold_rows": len(held), "rap_train_rows": len(train_texts), "final_rap_loss": history[-1] if history else None,
               "clean_frr_on_threshold_rows": float((clean_checked & (clean_delta < threshold)).mean()),
               "clean_mean_delta": float(clean_delta[clean_checked].mean()) if clean_checked.any() else None}
    return DefenseResult(model=victim.model, tokenizer=tokenizer, reject=reject,
                         details={"summary": summary, "score": score, "history": history})
