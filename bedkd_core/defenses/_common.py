"""Helpers the baseline defenses share: drawing their clean budget, fine-tuning, presets, not-run errors.

Every baseline draws from the same defender data BeDKD gets (`DefenderData.clean`, `.suspect`, optionally
`.dev`) and records how many rows of each it used in `details["summary"]["defender_rows"]`.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
from datasets import Dataset

from ..data import DataError
from ..models import load_classifier
from ..training import forward_batches, seed_everything, train_classifier
from ..victim import VictimConfig
from .base import DefenderData, DefenseConfig, DefenseResult


class NotRunnable(DataError):
    """A defense cannot run here for want of a resource (not data): e.g. ONION without a causal LM.

    The comparison harness shows such a defense as "not run: <reason>" instead of aborting.
    """


def per_class_rows(labels, *, per_class: int, num_classes: int, seed: int, defense: str, purpose: str,
                   exclude: set[int] | None = None, source: str = "clean") -> list[int]:
    """`per_class` row indices of each class drawn with `seed`; a DataError names the defense and the shortfall."""
    labels = np.asarray(labels)
    exclude = exclude or set()
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        rows = [int(i) for i in np.flatnonzero(labels == label) if int(i) not in exclude]
        if len(rows) < per_class:
            raise DataError(f"defense {defense!r} needs {per_class} {source} rows of class {label} for {purpose}, "
                            f"but the defender's {source} set has {len(rows)} left; give more {source} data or lower "
                            f"its per-class option")
        chosen += rng.permutation(rows)[:per_class].tolist()
    return sorted(chosen)


def class_counts(data: Dataset | None, num_classes: int) -> list[int]:
    if data is None:
        return [0] * num_classes
    return np.bincount(np.asarray(data["label"], dtype=int), minlength=num_classes).tolist()


def require_clean(data: DefenderData, *, per_class: int, defense: str, purpose: str) -> None:
    """Fail before any work when the defender's clean set has fewer than `per_class` rows of some class."""
    counts = class_counts(data.clean, data.num_classes)
    short = [c for c, n in enumerate(counts) if n < per_class]
    if short:
        raise DataError(f"defense {defense!r} needs {per_class} clean rows per class for {purpose}; the defender's "
                        f"clean set has {', '.join(f'class {c}: {counts[c]}' for c in short)}")


def held_out_split(data: DefenderData, *, per_class: int, seed: int, defense: str,
                   reserve_per_class: int = 0) -> tuple[Dataset, str, set[int]]:
    """Clean rows for setting a threshold: from `data.dev` when it has `per_class` rows of every class,
    otherwise from `data.clean` (leaving `reserve_per_class` rows per class there for the defense's other uses).

    Returns (rows, "dev" or "clean", indices of data.clean used). A DataError names what is missing.
    """
    dev_counts = class_counts(data.dev, data.num_classes)
    if data.dev is not None and min(dev_counts) >= per_class:
        rows = per_class_rows(data.dev["label"], per_class=per_class, num_classes=data.num_classes, seed=seed,
                              defense=defense, purpose="its threshold", source="dev")
        return data.dev.select(rows), "dev", set()
    clean_counts = class_counts(data.clean, data.num_classes)
    need = per_class + reserve_per_class
    if min(clean_counts) < need:
        dev_note = "no dev set" if data.dev is None else f"a dev set with {dev_counts} rows per class"
        raise DataError(f"defense {defense!r} needs {per_class} held-out clean rows per class to set its threshold "
                        f"(plus {reserve_per_class} per class for its own use): the defender has {dev_note} and a "
                        f"clean set with {clean_counts} rows per class")
    rows = per_class_rows(data.clean["label"], per_class=per_class, num_classes=data.num_classes, seed=seed,
                          defense=defense, purpose="its threshold")
    return data.clean.select(rows), "clean", set(rows)


def apply_preset(config_cls, presets: dict, scale: str, options: dict, *, defense: str):
    """The config of `config_cls` for `scale` (a key of `presets`), with `options` overriding fields (an option
    given as None sets None)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(options) - fields
    if unknown:
        raise DataError(f"unknown {defense} option(s) {', '.join(sorted(unknown))}: valid are {', '.join(sorted(fields))}")
    if scale not in presets:
        raise DataError(f"unknown scale {scale!r} for {defense}: use one of {', '.join(presets)}")
    values = {**presets[scale], **options}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_cls(**values)


def fine_tune(model, tokenizer, data: Dataset, *, epochs: int, learning_rate: float, batch_size: int,
              max_length: int, seed: int, desc: str) -> None:
    """Plain supervised fine-tuning in place (the library's `train_classifier`, AdamW, shuffled with `seed`)."""
    if epochs <= 0 or len(data) == 0:
        return
    config = VictimConfig(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
                          seed=seed)
    train_classifier(model, tokenizer, data.select_columns(["text", "label"]), config=config, desc=desc)


def retrain_recipe(*, victim, config, defense: str) -> VictimConfig:
    """How a data-filtering defense retrains: the victim's own `VictimConfig` (epochs, learning rate, batching) on
    `config.backbone` or the victim's backbone, with the defense's `seed`, `max_length` and `retrain_epochs`."""
    base: VictimConfig | None = getattr(victim, "config", None)
    backbone = config.backbone or (base.model if base is not None else None)
    if backbone is None:
        raise DataError(f"defense {defense!r} retrains from the backbone: give `backbone` (the victim's config is "
                        "unknown)")
    recipe = dataclasses.replace(base or VictimConfig(), model=backbone, seed=config.seed, max_length=config.max_length)
    if config.retrain_epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=config.retrain_epochs)
    return recipe


def drop_and_retrain(*, victim, data: DefenderData, dropped: np.ndarray, info: dict, recipe: VictimConfig | None,
                     desc: str) -> DefenseResult:
    """A data-filtering defense's result: a fresh classifier from `recipe.model` trained with `recipe` on the suspect
    rows not `dropped` (the victim itself when `recipe` is None: no retraining); `flagged` = `dropped`."""
    keep = np.setdiff1d(np.arange(len(data.suspect)), dropped)
    summary = {"defender_rows": rows_summary(suspect=len(data.suspect)), **info, "n_kept": int(len(keep)),
               "retrained": recipe is not None}
    if recipe is None:
        return DefenseResult(model=victim.model, tokenizer=victim.tokenizer, flagged=dropped,
                             details={"summary": summary})
    seed_everything(recipe.seed)
    model, tokenizer = load_classifier(recipe.model, num_labels=data.num_classes)
    train_classifier(model, tokenizer, data.suspect.select(keep.tolist()), config=recipe, desc=desc)
    summary["retrain"] = recipe.asdict()
    return DefenseResult(model=model.eval(), tokenizer=tokenizer, flagged=dropped, details={"summary": summary})


def copy_model(model):
    """A deep copy in eval mode: defenses never change the victim in place."""
    return copy.deepcopy(model).eval()


def cls_embeddings(model, tokenizer, texts: list[str], *, max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """The last layer's first-token ([CLS]) hidden state for each text, in input order."""
    out = None
    for rows, _, (hidden, _) in forward_batches(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                               hidden=True):
        cls = hidden[:, 0].cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), cls.shape[1]), dtype=np.float32)
        out[rows] = cls
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def rows_summary(*, clean: int = 0, suspect: int = 0, dev: int = 0) -> dict:
    """How many rows of each defender set a defense used (the comparison table's data column)."""
    return {"clean": int(clean), "suspect": int(suspect), "dev": int(dev)}


def base_fields(config: DefenseConfig) -> dict:
    return dataclasses.asdict(config)
