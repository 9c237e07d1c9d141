"""The checks' shared real data, loaded once per process: SST-2 and AG News sentences and labels, and the outputs
(probabilities, logits, hidden states) of the packaged MiniLM with seeded classification heads."""
from __future__ import annotations

import contextlib
import io
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def task(name: str):
    from ..data import load_task

    return load_task(name)


@lru_cache(maxsize=None)
def sentences(dataset: str, n: int, seed: int = 0) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """n test sentences of a dataset (a fixed random draw) and their labels."""
    test = task(dataset).test
    rows = np.random.default_rng(seed).choice(len(test), size=n, replace=False)
    return tuple(test[int(i)]["text"] for i in rows), tuple(int(test[int(i)]["label"]) for i in rows)


HEADS = {(2, 0): slice(0, 2), (2, 1): slice(2, 4), (4, 0): slice(4, 8), (4, 1): slice(8, 12)}
"""(number of classes, seed) → the logits of that classification head within the grading model's output."""
MAX_LENGTH = 64
"""Tokens per sentence in the grader's forward passes (AG News articles are truncated; keeps grading fast)."""
HEAD_STD = 1.5
"""Head weights ~ N(0, HEAD_STD²): MiniLM's pooled features have norm ≈ 1.3, so logits spread over a few units and
the probabilities are far from uniform; with BERT's default init (0.02) they sit near 1/K and mistakes hide."""


@lru_cache(maxsize=None)
def _minilm():
    """The packaged MiniLM, loaded once, with several seeded linear heads side by side (see `HEADS`).

    Kept in memory only, never on disk. Two heads of the same K on one encoder act as two models that differ in
    their classifier only: a 'teacher' (seed 0) and a 'DMM' or 'student' (seed 1).
    """
    import torch

    from ..models import load_classifier

    with torch.random.fork_rng(devices=[]), _no_progress_bars():
        torch.manual_seed(0)
        model, tokenizer = load_classifier("minilm", num_labels=max(s.stop for s in HEADS.values()))
    with torch.no_grad():
        weight = model.classifier.weight
        for (k, seed), rows in HEADS.items():
            draw = torch.randn(weight[rows].shape, generator=torch.Generator().manual_seed(1000 * k + seed))
            weight[rows] = (HEAD_STD * draw).to(weight.device)
        model.classifier.bias.zero_()
    return model.eval(), tokenizer


@contextlib.contextmanager
def _no_progress_bars():
    """transformers draws a 'Loading weights' bar on stderr; keep the grader's output clean."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _forward(texts, *, train: bool = False):
    """Logits of every head and last hidden states of MiniLM on `texts` (one padded batch), on the CPU."""
    import torch

    from ..training import tokenize

    model, tokenizer = _minilm()
    inputs = tokenize(tokenizer, list(texts), MAX_LENGTH)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.train(train)  # train mode: dropout on, as for the student during AKD
        try:
            out = model(**inputs, output_hidden_states=True)
        finally:
            model.eval()
    return out.logits.float().cpu(), out.hidden_states[-1].float().cpu(), inputs["attention_mask"].cpu()


@lru_cache(maxsize=None)
def probabilities(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Teacher and DMM softmax probabilities on 64 real test sentences: MiniLM with two seeded heads."""
    import torch

    from ..data import NUM_CLASSES

    texts, _ = sentences(dataset, 64)
    k = NUM_CLASSES[dataset]
    logits, _, _ = _forward(texts)
    return tuple(torch.softmax(logits[:, HEADS[(k, seed)]], dim=-1).numpy() for seed in (0, 1))


@lru_cache(maxsize=None)
def distillation_batch(dataset: str) -> dict:
    """Real student/teacher logits and last hidden states for 16 test sentences, with their labels.

    The student is MiniLM with the seed-1 head in train mode (dropout on, as during AKD), the teacher MiniLM with
    the seed-0 head in eval mode, so logits and hidden states differ. The batch is padded: padding counts in the MSE.
    """
    import torch

    from ..data import NUM_CLASSES

    texts, labels = sentences(dataset, 16, seed=1)
    k = NUM_CLASSES[dataset]
    s_logits, s_hidden, mask = _forward(texts, train=True)
    t_logits, t_hidden, _ = _forward(texts)
    return {"student_logits": s_logits[:, HEADS[(k, 1)]].contiguous(),
            "teacher_logits": t_logits[:, HEADS[(k, 0)]].contiguous(),
            "student_hidden": s_hidden, "teacher_hidden": t_hidden,
            "labels": torch.tensor(labels), "attention_mask": mask}


@lru_cache(maxsize=None)
def strip_copies(dataset: str, n: int, *, seed: int, repeat: int = 5) -> np.ndarray:
    """MiniLM's (seed-0 head) probabilities on `repeat` STRIP-perturbed copies of n real test sentences.

    Shape (n, repeat, classes). The copies are made by `defenses.strip.perturb` (swap ratio 0.5) with the
    content words of 32 other test sentences, as STRIP does with the defender's clean rows."""
    import torch

    from ..data import NUM_CLASSES
    from ..defenses.strip import content_words, perturb

    texts, _ = sentences(dataset, n, seed)
    sources = content_words(list(sentences(dataset, 32, seed + 1)[0]))
    rng = np.random.default_rng(seed)
    copies = [perturb(t, words=sources[rng.integers(len(sources))], swap_ratio=0.5, rng=rng)
              for t in texts for _ in range(repeat)]
    k = NUM_CLASSES[dataset]
    logits, _, _ = _forward(copies)
    return torch.softmax(logits[:, HEADS[(k, 0)]], dim=-1).numpy().reshape(n, repeat, k)


DATASET_NAMES = {"sst2": "SST-2", "agnews": "AG News"}


HIDDEN_SEED_VARIABLE = "BEDKD_GRADING_SEED"


def hidden_seed() -> int:
    """The seed hidden tests draw their rows with: $BEDKD_GRADING_SEED, the teacher's secret, else 0."""
    import os

    text = os.environ.get(HIDDEN_SEED_VARIABLE, "0").strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{HIDDEN_SEED_VARIABLE}={text!r} is not an integer; "
                         f"set it to the whole number you keep secret from students") from None
