"""The victim cache: fine-tune a victim once, reuse it wherever the same data, attack and settings recur.

Introduced in chapter 2 (backdoored classifiers). A victim's folder is named by a hash of everything that made it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from .cache import cache_dir, cache_key, fingerprint
from .models import DEFAULT_MODEL, METADATA, MINILM_DIR_ENV, describe_model, load_cached, load_classifier, save_model
from .options import option, validate
from .training import Batching, precision, seed_everything, train_classifier


@dataclass(frozen=True)
class VictimConfig:
    """How a victim is fine-tuned. Every field enters the cache key."""

    model: str = option(
        DEFAULT_MODEL,
        "hub id or local folder of the backbone (minilm: the packaged all-MiniLM-L6-v2)")
    epochs: int = option(3, "fine-tuning epochs")
    learning_rate: float = option(5e-5, "AdamW learning rate")
    batch_size: int = option(32, "batch size")
    max_length: int = option(128, "max tokens per input")
    seed: int = option(0, "random seed of initialisation and batch order")
    batching: Batching = option(
        "shuffle",
        "`shuffle`: random batches each epoch. `by_length`: each epoch, shuffle, sort every run of 50 "
        "batches' rows by token count, cut into batches and shuffle their order (HF Trainer's "
        "group_by_length): about half the padding, half the time on a CPU.")

    def __post_init__(self):
        validate(self, what="victim")

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Victim:
    """A fine-tuned classifier with its tokenizer, the config that made it and where it is stored."""

    model: torch.nn.Module
    tokenizer: object
    config: VictimConfig
    path: Path
    seconds: float
    from_cache: bool


def get_victim(*, train: Dataset, num_labels: int, config: VictimConfig, describe: dict,
               trust_pickle: bool = False) -> Victim:
    """Fine-tune a victim on `train`, or reuse the cached one made from the same data, attack and settings.

    `describe` names what produced `train` (dataset, attack parameters); it is stored and hashed with the data.
    A cached victim is loaded only if its files match the sha256 written with them (`models.load_cached`).
    """
    payload = {"describe": describe, "victim": config.asdict(), "num_labels": num_labels, "data": fingerprint(train)}
    if config.model == DEFAULT_MODEL and os.environ.get(MINILM_DIR_ENV):
        payload["weights"] = describe_model(config.model)  # a copy's victims never pass for the package's
    if precision() != "fp32":
        payload["precision"] = precision()  # a GPU's mixed-precision victim; CPU keys are unchanged
    folder = cache_dir() / "victims" / cache_key(payload)
    if (folder / METADATA).is_file():
        model, tokenizer, meta = load_cached(folder, num_labels=num_labels)
        model.eval()
        return Victim(model, tokenizer, config, folder, meta["seconds"], from_cache=True)
    seed_everything(config.seed)
    model, tokenizer = load_classifier(config.model, num_labels=num_labels, trust_pickle=trust_pickle)
    started = time.perf_counter()
    desc = f"victim {describe.get('attack', {}).get('name', '')}"
    train_classifier(model, tokenizer, train, config=config, desc=desc)
    seconds = time.perf_counter() - started
    save_model(model, tokenizer, folder, {**payload, "seconds": seconds})
    return Victim(model, tokenizer, config, folder, seconds, from_cache=False)
