"""Fine-tune a classifier (shuffled or length-grouped batches) and run it over texts in batches.

Introduced in chapter 2 (backdoored classifiers). `predict_proba` and `forward_batches` are the inference
helpers every later chapter and defense reuses.
"""
from __future__ import annotations

import random
from typing import Literal

import numpy as np
import torch
from datasets import Dataset

from .models import device
from .progress import progress


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


Batching = Literal["shuffle", "by_length"]
"""How batches are cut (`VictimConfig.batching`, `BeDKDConfig.batching`)."""

Precision = Literal["bf16", "fp16", "fp32"]
"""How a model trains: bf16 or fp16 autocast on a GPU, plain fp32 on the CPU."""


def precision(dev: torch.device | None = None) -> Precision:
    """The precision to train in on `dev` (default `device()`).

    bf16 on a GPU of compute capability 8 or more (Ampere and later), fp16 on an older one (a T4 is 7.5: bf16 is
    emulated there, fp16 is native), fp32 on the CPU, where the numbers stay exactly reproducible.
    """
    dev = device() if dev is None else dev
    if dev.type != "cuda":
        return "fp32"
    major, _ = torch.cuda.get_device_capability(dev)
    return "bf16" if major >= 8 else "fp16"


def autocast(mode: Precision) -> torch.autocast:
    """The autocast context of `mode` for forward passes; a no-op in fp32."""
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype, enabled=mode != "fp32")


def grad_scaler(mode: Precision) -> torch.amp.GradScaler:
    """The gradient scaler of `mode`: active in fp16 only (bf16 and fp32 need none; disabled it passes through)."""
    return torch.amp.GradScaler("cuda", enabled=mode == "fp16")


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """One padded, truncated batch of `texts`, on `device()`."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device()) for k, v in batch.items()}


def train_classifier(model, tokenizer, data: Dataset, *, config, desc: str = "fine-tune") -> None:
    """Plain supervised fine-tuning with AdamW in `precision()`; shuffles with the config's seed.

    `config` is duck-typed (a `victim.VictimConfig` or anything alike): only its `epochs`, `learning_rate`,
    `batch_size`, `max_length`, `seed` and `batching` are read.
    """
    seed_everything(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    mode = precision()
    scaler = grad_scaler(mode)
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
                with autocast(mode):
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
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
