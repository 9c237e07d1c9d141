"""Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018), ported to a transformer's feed-forward units.

1. Run the victim on the defender's clean rows and record each FFN intermediate unit's mean activation (after
   the activation function, over real tokens) in the last `layers` encoder layers.
2. Prune units in increasing order of mean activation — the units clean data leaves dormant, where a backdoor
   can hide — in steps of `prune_step` (a share of each layer's units), for as long as accuracy on the same
   clean rows stays within `max_acc_drop` of the unpruned model's, up to `max_prune_ratio`.
3. Prune means: the unit's row of `intermediate.dense` (weight and bias) is held at zero by a mask, so its
   activation is act(0) = 0 for GELU/ReLU, and its column of `output.dense` is zeroed too.
4. Fine-tune on the clean rows with the mask in place (pruned units stay zero), then make the pruning permanent.

`details["summary"]["pruned"]` lists the pruned units as {layer index: [unit, ...]}.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import prune

from ..data import DataError
from ..options import option
from ..training import predict_proba, seed_everything, tokenize
from ._common import copy_model, fine_tune, per_class_rows, require_clean, rows_summary
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class FinePruningConfig(DefenseConfig):
    """Which layers to prune, how far, and the fine-tuning that follows (same clean budget as `finetune`)."""

    clean_per_class: int = option(400, "clean rows per class the defense trains on (finetune, fine_pruning, nad)")
    layers: int = option(1, "Prune the FFN units of the last `layers` encoder layers.")
    prune_step: float = option(0.05, "share of units added per pruning step")
    max_prune_ratio: float = option(0.9, "most units pruned, as a share of a layer's units")
    max_acc_drop: float = option(
        0.05,
        "Stop pruning before clean accuracy (on the defender's clean rows) falls more than this below the"
        " start.")
    epochs: int = option(
        10,
        "training epochs (finetune, fine_pruning: fine-tuning; nad: distillation; rap: RAP-word training)")
    learning_rate: float = option(3e-5, "learning rate (Adam/AdamW; rap: the RAP word's gradient step)")
    batch_size: int = option(16, "batch size")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(42, "random seed of the defense's own sampling and training")


PRESETS = {"full": {}, "quick": dict(clean_per_class=128, epochs=6, prune_step=0.1)}


def check(data: DefenderData, config: FinePruningConfig) -> None:
    require_clean(data, per_class=config.clean_per_class, defense="fine_pruning", purpose="pruning and fine-tuning")


def ffn_layers(model) -> list:
    """The encoder layers of a BERT-family classifier (each with `.intermediate.dense` and `.output.dense`)."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[0], "intermediate"):
        raise DataError(f"fine_pruning supports BERT-family encoders (encoder.layer[i].intermediate); "
                        f"{type(model).__name__} has none")
    return list(layers)


@torch.no_grad()
def mean_activations(model, tokenizer, texts: list[str], *, layer_ids: list[int], max_length: int = 128,
                     batch_size: int = 64) -> dict[int, np.ndarray]:
    """Mean post-activation value of every FFN intermediate unit of the given layers, over real tokens."""
    layers = ffn_layers(model)
    sums = {i: None for i in layer_ids}
    count = 0
    mask_holder = {}

    def hook_for(i):
        def hook(_module, _inputs, output):
            m = mask_holder["mask"].unsqueeze(-1).to(output.dtype)
            total = (output * m).sum(dim=(0, 1))
            sums[i] = total if sums[i] is None else sums[i] + total
        return hook

    handles = [layers[i].intermediate.register_forward_hook(hook_for(i)) for i in layer_ids]
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenize(tokenizer, texts[start : start + batch_size], max_length)
            mask_holder["mask"] = batch["attention_mask"]
            count += int(batch["attention_mask"].sum())
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {i: (sums[i] / max(count, 1)).cpu().numpy() for i in layer_ids}


def _zeroing_hooks(model, units: dict[int, np.ndarray]):
    layers = ffn_layers(model)

    def hook_for(idx):
        index = torch.as_tensor(idx, dtype=torch.long)

        def hook(_module, _inputs, output):
            output = output.clone()
            output[..., index.to(output.device)] = 0
            return output
        return hook

    return [layers[i].intermediate.register_forward_hook(hook_for(idx)) for i, idx in units.items() if len(idx)]


def _accuracy(model, tokenizer, texts, labels, max_length) -> float:
    return float((predict_proba(model, tokenizer, texts, max_length=max_length).argmax(1) == np.asarray(labels)).mean())


def choose_units(model, tokenizer, texts: list[str], labels, *, config: FinePruningConfig) -> tuple[dict, list[dict]]:
    """Units to prune per layer (dormant first), the largest ratio whose clean accuracy stays within the bound."""
    layers = ffn_layers(model)
    layer_ids = list(range(len(layers) - config.layers, len(layers)))
    activation = mean_activations(model, tokenizer, texts, layer_ids=layer_ids, max_length=config.max_length)
    order = {i: np.argsort(activation[i], kind="stable") for i in layer_ids}
    base = _accuracy(model, tokenizer, texts, labels, config.max_length)
    trace = [{"ratio": 0.0, "clean_acc": base}]
    chosen = {i: np.zeros(0, dtype=int) for i in layer_ids}
    ratio = config.prune_step
    while ratio <= config.max_prune_ratio + 1e-9:
        units = {i: order[i][: int(round(ratio * len(order[i])))] for i in layer_ids}
        handles = _zeroing_hooks(model, units)
        try:
            acc = _accuracy(model, tokenizer, texts, labels, config.max_length)
        finally:
            for h in handles:
                h.remove()
        trace.append({"ratio": round(ratio, 4), "clean_acc": acc})
        if acc < base - config.max_acc_drop:
            break
        chosen = units
        ratio += config.prune_step
    return chosen, trace


def prune_units(model, units: dict[int, np.ndarray]) -> list:
    """Mask the units' intermediate rows (weight and bias) and zero their output columns; returns the modules
    carrying a mask, so `finalize` can make the pruning permanent after fine-tuning."""
    layers = ffn_layers(model)
    masked = []
    for i, idx in units.items():
        if not len(idx):
            continue
        dense, out = layers[i].intermediate.dense, layers[i].output.dense
        row_mask = torch.ones(dense.out_features, device=dense.weight.device)
        row_mask[torch.as_tensor(idx, dtype=torch.long)] = 0
        prune.custom_from_mask(dense, "weight", row_mask.unsqueeze(1).expand_as(dense.weight).clone())
        prune.custom_from_mask(dense, "bias", row_mask.clone())
        with torch.no_grad():
            out.weight[:, torch.as_tensor(idx, dtype=torch.long)] = 0
        masked.append(dense)
    return masked


def finalize(masked: list) -> None:
    for dense in masked:
        prune.remove(dense, "weight")
        prune.remove(dense, "bias")


def fine_pruning(*, victim, data: DefenderData, config: FinePruningConfig) -> DefenseResult:
    """Prune the victim's dormant FFN units (on a deep copy), then fine-tune on the defender's clean rows."""
    check(data, config)
    rows = per_class_rows(data.clean["label"], per_class=config.clean_per_class, num_classes=data.num_classes,
                          seed=config.seed, defense="fine_pruning", purpose="pruning and fine-tuning")
    clean = data.clean.select(rows)
    texts, labels = list(clean["text"]), list(clean["label"])
    seed_everything(config.seed)
    model = copy_model(victim.model)
    units, trace = choose_units(model, victim.tokenizer, texts, labels, config=config)
    masked = prune_units(model, units)
    pruned_acc = _accuracy(model, victim.tokenizer, texts, labels, config.max_length)
    # zero output columns can drift back during fine-tuning only through their gradient, which is zero:
    # their input (the pruned unit) is always 0.
    fine_tune(model, victim.tokenizer, clean, epochs=config.epochs, learning_rate=config.learning_rate,
              batch_size=config.batch_size, max_length=config.max_length, seed=config.seed, desc="fine-pruning")
    finalize(masked)
    pruned = {int(i): sorted(int(u) for u in idx) for i, idx in units.items()}
    summary = {"defender_rows": rows_summary(clean=len(rows)), "pruned": pruned,
               "n_pruned": int(sum(len(v) for v in pruned.values())), "prune_trace": trace,
               "clean_acc_after_pruning": pruned_acc}
    return DefenseResult(model=model.eval(), tokenizer=victim.tokenizer, details={"summary": summary})
