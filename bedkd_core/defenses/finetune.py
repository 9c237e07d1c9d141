"""FT: fine-tune the backdoored model on the defender's clean budget, nothing else.

The simplest post-training repair and the ablation of fine-pruning and NAD: clean fine-tuning alone often
leaves a word-trigger backdoor in place, because nothing in the clean data exercises the trigger.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..training import seed_everything
from ._common import copy_model, fine_tune, per_class_rows, require_clean, rows_summary
from ..options import option
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class FineTuneConfig(DefenseConfig):
    """Fine-tuning on `clean_per_class` clean rows per class: BeDKD's whole clean budget at full scale (80 for the
    DMM + 320 for AKD); fine-pruning and NAD get the same."""

    clean_per_class: int = option(400, "clean rows per class the defense trains on (finetune, fine_pruning, nad)")
    epochs: int = option(
        10,
        "training epochs (finetune, fine_pruning: fine-tuning; nad: distillation; rap: RAP-word training)")
    learning_rate: float = option(3e-5, "learning rate (Adam/AdamW; rap: the RAP word's gradient step)")
    batch_size: int = option(16, "batch size")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(clean_per_class=128, epochs=6)}
"""quick: 128 clean rows per class for 6 epochs, as much clean data as BeDKD's quick preset uses (64 + 64)."""


def check(data: DefenderData, config: FineTuneConfig) -> None:
    require_clean(data, per_class=config.clean_per_class, defense="finetune", purpose="fine-tuning")


def finetune(*, victim, data: DefenderData, config: FineTuneConfig) -> DefenseResult:
    """A deep copy of the victim fine-tuned on `clean_per_class` rows per class of `data.clean`."""
    check(data, config)
    rows = per_class_rows(data.clean["label"], per_class=config.clean_per_class, num_classes=data.num_classes,
                          seed=config.seed, defense="finetune", purpose="fine-tuning")
    clean = data.clean.select(rows)
    seed_everything(config.seed)
    model = copy_model(victim.model)
    fine_tune(model, victim.tokenizer, clean, epochs=config.epochs, learning_rate=config.learning_rate,
              batch_size=config.batch_size, max_length=config.max_length, seed=config.seed, desc="FT")
    summary = {"defender_rows": rows_summary(clean=len(rows)), "epochs": config.epochs}
    return DefenseResult(model=model.eval(), tokenizer=victim.tokenizer, details={"summary": summary})
