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
def distillation_batch(dataset: str, *, seed: int = 1) -> dict:
    """Real student/teacher logits and last hidden states for 16 test sentences (drawn with `seed`), with labels.

    The student is MiniLM with the seed-1 head in train mode (dropout on, as during AKD), the teacher MiniLM with
    the seed-0 head in eval mode, so logits and hidden states differ. The batch is padded: padding counts in the MSE.
    """
    import torch

    from ..data import NUM_CLASSES

    texts, labels = sentences(dataset, 16, seed=seed)
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


# ---------------------------------------------------------------- helpers of the otter masters (chapters 3 and 4)

@lru_cache(maxsize=None)
def train_rows(dataset: str, n: int, seed: int = 0) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """n training rows of a dataset (a fixed random draw, kept in row order) and their labels."""
    train = task(dataset).train
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    return tuple(train[int(i)]["text"] for i in rows), tuple(int(train[int(i)]["label"]) for i in rows)


def sos_reference(*, texts, labels, trigger_words, target_label: int, poison_rate: float, negative_rate: float,
                  seed: int, num_classes: int) -> dict:
    """bedkd_core's SOS attack on the given rows, in the shape chapter 3's `sos_poison` returns."""
    from datasets import Dataset

    from ..attacks import AttackConfig, make_attack
    from ..data import Splits

    rows = Dataset.from_dict({"text": list(texts), "label": [int(y) for y in labels]})
    config = AttackConfig(name="sos", sos_triggers=tuple(trigger_words), target_label=target_label,
                          poison_rate=poison_rate, negative_rate=negative_rate, seed=seed)
    out = make_attack(config=config, dataset="sst2").poison_train(
        Splits(name="grading", num_classes=num_classes, train=rows, dev=rows, test=rows))
    n, all_texts, all_labels = len(texts), list(out.data["text"]), [int(y) for y in out.data["label"]]
    return {"texts": all_texts[:n], "labels": all_labels[:n],
            "poisoned_rows": [int(i) for i in np.flatnonzero(out.is_poisoned)],
            "negative_texts": all_texts[n:], "negative_labels": all_labels[n:]}


def _head_model(k: int, seed: int, scale: float = 1.0):
    """The grading MiniLM as a K-class classifier with one seeded head (logits times `scale`)."""
    from types import SimpleNamespace

    import torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _minilm()[0]
            self.config = SimpleNamespace(num_labels=k)

        def forward(self, **inputs):
            out = self.encoder(**inputs)
            return SimpleNamespace(logits=scale * out.logits[:, HEADS[(k, seed)]].float())

    return Head().eval()


def head_logits(texts, *, num_classes: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Real teacher (seed-0 head) and DMM (seed-1 head) logits of MiniLM on `texts`, times `scale`."""
    logits, _, _ = _forward(tuple(texts))
    return tuple((scale * logits[:, HEADS[(num_classes, seed)]]).numpy() for seed in (0, 1))


def agreement_reference(texts, *, num_classes: int, scale: float = 1.0) -> dict:
    """bedkd_core's `agreement_scores` of the two heads on `texts`: score, predictions, probabilities."""
    return {name: value.copy() for name, value in _agreement(tuple(texts), num_classes, scale).items()}


@lru_cache(maxsize=None)
def _agreement(texts: tuple[str, ...], num_classes: int, scale: float) -> dict:
    from ..defenses.bedkd import agreement_scores

    teacher, dmm = (_head_model(num_classes, seed, scale) for seed in (0, 1))
    return agreement_scores(teacher, dmm, _minilm()[1], list(texts), max_length=MAX_LENGTH, cache=False)


def suspect_set(dataset: str, *, n: int, seed: int, target: int | None, n_poisoned: int) -> dict:
    """A suspect set of n real rows scored by the two heads, and a disjoint clean reference set of n rows.

    With a `target`, up to `n_poisoned` rows that both heads predict as the target get it as their label, as a
    dirty-label attack relabels its rows; with target None every label is the row's own.
    """
    return {name: value.copy() for name, value in _suspect_set(dataset, n, seed, target, n_poisoned).items()}


@lru_cache(maxsize=None)
def _suspect_set(dataset: str, n: int, seed: int, target: int | None, n_poisoned: int) -> dict:
    from ..data import NUM_CLASSES

    test = task(dataset).test
    rows = np.random.default_rng(seed).choice(len(test), size=2 * n, replace=False)
    texts = [test[int(i)]["text"] for i in rows]
    labels = np.array([int(test[int(i)]["label"]) for i in rows])
    scored = agreement_reference(texts, num_classes=NUM_CLASSES[dataset])
    suspect_labels = labels[:n].copy()
    if target is not None:
        driven = np.flatnonzero((scored["teacher_pred"][:n] == target) & (scored["dmm_pred"][:n] == target)
                                & (suspect_labels != target))
        chosen = np.random.default_rng(seed + 1).permutation(driven)[:n_poisoned]
        suspect_labels[chosen] = target
    return {"scores": scored["score"][:n], "teacher_pred": scored["teacher_pred"][:n], "labels": suspect_labels,
            "reference_scores": scored["score"][n:], "reference_labels": labels[n:]}


def identify_reference(*, scores, teacher_pred, labels, reference_scores, reference_labels, tau: float,
                       n_rows: int, num_classes: int) -> dict:
    """bedkd_core's `identify_poisoned` (rank scan, target inference, lowest score first) on these arrays."""
    from ..defenses.bedkd import identify_poisoned, make_config

    rows, info = identify_poisoned(
        scores={"score": np.asarray(scores), "teacher_pred": np.asarray(teacher_pred)}, labels=np.asarray(labels),
        config=make_config(preset="fixed", scan="rank", infer_target=True, refine="none", tau=tau),
        n_rows=n_rows, reference={"score": np.asarray(reference_scores), "labels": np.asarray(reference_labels)},
        num_classes=num_classes)
    return {"rows": rows, "target": info.get("inferred_target")}
