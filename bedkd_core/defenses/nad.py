"""NAD, Neural Attention Distillation (Li et al., ICLR 2021), ported to a transformer encoder.

1. Teacher: a deep copy of the backdoored model fine-tuned on the defender's clean rows.
2. Student: another deep copy of the backdoored model, trained on the same clean rows with
   CE(student, y) + beta · sum over the chosen layers of AT-loss(student, teacher).

NAD's attention map of a feature map with C channels is A = normalize(mean_c |a_c|^p) over spatial positions.
For a transformer layer output h (tokens × hidden) the tokens are the positions and the hidden units the
channels: A(h) = normalize over real tokens of mean_d h_d^p, and the AT-loss is the mean squared difference of the
student's and teacher's maps, as in NAD's reference loss. It is BeDKD's trust-only relative: distillation toward
a clean-tuned model, with no punish term and no identified poison.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models import device
from ..training import seed_everything, tokenize
from ._common import copy_model, fine_tune, per_class_rows, require_clean, rows_summary
from ..options import option
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class NADConfig(DefenseConfig):
    clean_per_class: int = option(400, "clean rows per class the defense trains on (finetune, fine_pruning, nad)")
    teacher_epochs: int = option(10, "epochs of the teacher's clean fine-tuning")
    epochs: int = option(
        10,
        "training epochs (finetune, fine_pruning: fine-tuning; nad: distillation; rap: RAP-word training)")
    beta: float = option(
        1000.0,
        "Weight of each layer's attention-transfer loss (NAD's CIFAR settings use 500–5000 per group).")
    power: float = option(2.0, "exponent p of the attention map mean |h|^p")
    layers: int = option(0, "Align the last `layers` encoder layers' outputs; 0 = every layer.")
    learning_rate: float = option(3e-5, "learning rate (Adam/AdamW; rap: the RAP word's gradient step)")
    batch_size: int = option(16, "batch size")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(clean_per_class=128, teacher_epochs=6, epochs=6)}


def check(data: DefenderData, config: NADConfig) -> None:
    require_clean(data, per_class=config.clean_per_class, defense="nad", purpose="the teacher and distillation")


def attention_map(hidden: torch.Tensor, attention_mask: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """NAD's attention map of a layer output (batch × tokens × hidden): mean_d |h|^p per token, padding zeroed,
    L2-normalised over tokens."""
    amap = hidden.abs().pow(power).mean(dim=-1) * attention_mask.to(hidden.dtype)
    return F.normalize(amap, dim=1)


def at_loss(student_hidden, teacher_hidden, attention_mask, power: float = 2.0) -> torch.Tensor:
    return (attention_map(student_hidden, attention_mask, power) - attention_map(teacher_hidden, attention_mask, power)).pow(2).mean()


def _layer_slice(n_hidden: int, layers: int) -> list[int]:
    """Indices into `hidden_states` (0 is the embeddings) of the encoder layers to align."""
    ids = list(range(1, n_hidden))
    return ids if layers <= 0 else ids[-layers:]


@torch.no_grad()
def mean_at_loss(student, teacher, tokenizer, texts: list[str], *, config: NADConfig) -> float:
    """Mean summed AT-loss over the chosen layers between two models on `texts` (a diagnostic)."""
    student.eval()
    teacher.eval()
    losses = []
    for start in range(0, len(texts), 64):
        batch = tokenize(tokenizer, texts[start : start + 64], config.max_length)
        hs = student(**batch, output_hidden_states=True).hidden_states
        ht = teacher(**batch, output_hidden_states=True).hidden_states
        ids = _layer_slice(len(hs), config.layers)
        losses.append(sum(at_loss(hs[i], ht[i], batch["attention_mask"], config.power) for i in ids).item())
    return float(np.mean(losses))


def distill(student, teacher, tokenizer, clean, *, config: NADConfig) -> list[dict]:
    """Train `student` in place with CE + beta · AT-loss toward the frozen `teacher`; per-epoch mean losses."""
    seed_everything(config.seed)
    texts, labels = list(clean["text"]), list(clean["label"])
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    teacher.eval()
    student.train()
    history = []
    for epoch in range(1, config.epochs + 1):
        ce_sum, at_sum, n = 0.0, 0.0, 0
        order = rng.permutation(len(texts))
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = tokenize(tokenizer, [texts[i] for i in rows], config.max_length)
            target = torch.tensor([labels[i] for i in rows], device=device())
            with torch.no_grad():
                t_hidden = teacher(**batch, output_hidden_states=True).hidden_states
            out = student(**batch, output_hidden_states=True)
            ids = _layer_slice(len(out.hidden_states), config.layers)
            ce = F.cross_entropy(out.logits, target)
            at = sum(at_loss(out.hidden_states[i], t_hidden[i], batch["attention_mask"], config.power) for i in ids)
            loss = ce + config.beta * at
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ce_sum, at_sum, n = ce_sum + ce.item(), at_sum + at.item(), n + 1
        history.append({"epoch": epoch, "ce": ce_sum / max(n, 1), "at": at_sum / max(n, 1)})
    student.eval()
    return history


def nad(*, victim, data: DefenderData, config: NADConfig) -> DefenseResult:
    """Fine-tune a teacher copy on the clean rows, then attention-distil a student copy of the victim toward it."""
    check(data, config)
    rows = per_class_rows(data.clean["label"], per_class=config.clean_per_class, num_classes=data.num_classes,
                          seed=config.seed, defense="nad", purpose="the teacher and distillation")
    clean = data.clean.select(rows)
    seed_everything(config.seed)
    teacher = copy_model(victim.model)
    fine_tune(teacher, victim.tokenizer, clean, epochs=config.teacher_epochs, learning_rate=config.learning_rate,
              batch_size=config.batch_size, max_length=config.max_length, seed=config.seed, desc="NAD teacher")
    teacher.eval()
    student = copy_model(victim.model)
    probe = list(clean["text"])[: min(64, len(clean))]
    at_before = mean_at_loss(student, teacher, victim.tokenizer, probe, config=config)
    history = distill(student, teacher, victim.tokenizer, clean, config=config)
    at_after = mean_at_loss(student, teacher, victim.tokenizer, probe, config=config)
    del teacher
    summary = {"defender_rows": rows_summary(clean=len(rows)), "at_loss_before": at_before, "at_loss_after": at_after,
               "final_ce": history[-1]["ce"] if history else None}
    return DefenseResult(model=student.eval(), tokenizer=victim.tokenizer, details={"summary": summary,
                                                                                   "history": history})
