"""BeDKD: the directional mapping module (DMM) and adversarial knowledge distillation (AKD).

Each stage is a public function a chapter can call on its own:
`distillation_loss` (ch. 4), `flip_labels`, `train_dmm`, `agreement_scores`, `log_odds`, `identify_poisoned` (ch. 4,
the last two from `bedkd_identify`), `akd` (ch. 5) and `bedkd` (ch. 5), which runs them all. The defense never
sees oracle poison flags.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from ..cache import cache_dir, cache_key, fingerprint, save_arrays_atomic, weights_digest
from ..data import DataError
from ..models import METADATA, device, load_cached, save_model
from ..progress import progress
from ..training import (autocast, epoch_batches, grad_scaler, precision, predict_proba, seed_everything,
                        token_lengths, tokenize)
from .base import DefenderData, DefenseResult
from .bedkd_config import PRESETS, BeDKDConfig, configure, make_config
from .bedkd_identify import (evidence_count, identify_poisoned, infer_target, log_odds, several_targets,
                             target_evidence)

__all__ = ["BeDKDConfig", "PRESETS", "make_config", "configure", "check", "distillation_loss", "flip_labels",
           "split_clean", "dmm_cache_path", "train_dmm", "agreement_scores", "log_odds", "infer_target",
           "identify_poisoned", "evidence_count", "several_targets", "target_evidence", "dev_tolerance",
           "select_epoch", "akd", "bedkd"]
"""The stages a chapter can call on its own, and the config they share (defined in `bedkd_config`)."""


# ---------------------------------------------------------------- the loss (chapter 4)

def distillation_loss(*, student_logits, teacher_logits, student_hidden, teacher_hidden, labels,
                      temperature: float, alpha: float, attention_mask=None, sign: int = 1,
                      kl_weight: float = 1.0, hidden_weight: float = 1.0) -> torch.Tensor:
    """sign · [a·CE(z_s, y) + (1−a)·(KL(softmax(z_t/T) ‖ softmax(z_s/T)) + MSE(h_s, h_t))].

    KL is batch-mean with no T² factor, as in the reference code. MSE averages over every position, or over
    real tokens only when `attention_mask` is given. sign=+1 is trust distillation, −1 punish distillation.
    `kl_weight` and `hidden_weight` (1 in the reference) scale the two distillation terms for ablations.
    """
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), F.softmax(teacher_logits / temperature, dim=-1),
                  reduction="batchmean")
    if attention_mask is None:
        mse = F.mse_loss(student_hidden, teacher_hidden)
    else:
        mask = attention_mask.unsqueeze(-1).to(student_hidden.dtype)
        mse = ((student_hidden - teacher_hidden) ** 2 * mask).sum() / (mask.sum() * student_hidden.shape[-1])
    return sign * (alpha * ce + (1 - alpha) * (kl_weight * kl + hidden_weight * mse))


# ---------------------------------------------------------------- batches with a frozen teacher

@dataclass
class _Batch:
    inputs: dict
    labels: torch.Tensor
    teacher: object
    cached: tuple | None = None

    def teacher_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, last hidden states) of the frozen teacher: cached once, or recomputed (reference schedule)."""
        if self.cached is not None:
            return self.cached
        with torch.no_grad(), autocast(precision()):
            out = self.teacher(**self.inputs, output_hidden_states=True)
        return out.logits.float(), out.hidden_states[-1].float()


def _fixed_batches(teacher, tokenizer, data: Dataset, *, config: BeDKDConfig, seed: int) -> list[_Batch]:
    """Shuffle once with `seed` and cut into fixed batches, as the reference does (then fed in a fixed order); with
    `config.batching="by_length"`, rows of similar length share a batch."""
    texts, labels = list(data["text"]), list(data["label"])
    lengths = token_lengths(tokenizer, texts, max_length=config.max_length) if config.batching == "by_length" else None
    teacher.eval()
    batches = []
    for rows in epoch_batches(len(texts), batch_size=config.batch_size, rng=np.random.default_rng(seed), lengths=lengths):
        batch = _Batch(tokenize(tokenizer, [texts[i] for i in rows], config.max_length),
                       torch.tensor([labels[i] for i in rows], device=device()), teacher)
        if config.cache_teacher:
            batch.cached = batch.teacher_outputs()
        batches.append(batch)
    return batches


def _distill_step(student, optimizer, batch: _Batch, *, scaler: torch.amp.GradScaler, temperature: float,
                  config: BeDKDConfig, sign: int) -> float:
    teacher_logits, teacher_hidden = batch.teacher_outputs()
    with autocast(precision()):
        out = student(**batch.inputs, output_hidden_states=True)
    loss = distillation_loss(
        student_logits=out.logits.float(), teacher_logits=teacher_logits, student_hidden=out.hidden_states[-1].float(),
        teacher_hidden=teacher_hidden, labels=batch.labels, temperature=temperature, alpha=config.alpha,
        attention_mask=batch.inputs["attention_mask"] if config.mask_padding else None, sign=sign,
        kl_weight=config.kl_weight, hidden_weight=config.hidden_weight,
    )
    if sign < 0 and config.punish_bound is not None and -loss.item() > config.punish_bound:
        return loss.item()  # already pushed far enough: no further ascent on this batch
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    return loss.item()


# ---------------------------------------------------------------- stage 1: the DMM (chapter 4)

def flip_labels(labels, *, num_classes: int) -> list[int]:
    """The directional mapping π(y) = (y + 1) mod K: a swap for binary tasks, a cyclic shift otherwise."""
    return [(int(y) + 1) % num_classes for y in labels]


def split_clean(clean: Dataset, *, num_classes: int, dmm_per_class: int, clean_per_class: int,
                seed: int) -> tuple[Dataset, Dataset]:
    """Two disjoint per-class draws from the defender's clean set: the DMM's and AKD's."""
    labels = np.asarray(clean["label"])
    rng = np.random.default_rng(seed)
    dmm_rows, akd_rows = [], []
    for label in range(num_classes):
        rows = np.flatnonzero(labels == label)
        need = dmm_per_class + clean_per_class
        if len(rows) < need:
            raise DataError(f"the clean set has {len(rows)} samples of class {label}; BeDKD needs {need} "
                            f"({dmm_per_class} for the DMM + {clean_per_class} for AKD). Give more clean data "
                            "or lower --dmm-per-class / --clean-per-class.")
        rows = rng.permutation(rows)
        dmm_rows += rows[:dmm_per_class].tolist()
        akd_rows += rows[dmm_per_class:need].tolist()
    return clean.select(sorted(dmm_rows)), clean.select(sorted(akd_rows))


def check(data: DefenderData, config: BeDKDConfig) -> None:
    """Fail before any work when the defender's clean set cannot give the DMM and AKD their rows."""
    try:
        split_clean(data.clean, num_classes=data.num_classes, dmm_per_class=config.dmm_per_class,
                    clean_per_class=config.clean_per_class, seed=config.seed)
    except DataError as err:
        raise DataError(f"defense 'bedkd': {err}") from None


DMM_SETTINGS = ("dmm_epochs", "temperature_dmm", "alpha", "kl_weight", "hidden_weight", "mask_padding",
                "learning_rate", "batch_size", "max_length", "batching", "seed")
"""The config fields that shape a DMM; with the teacher's weights and the data they key the DMM cache."""
DMM_CACHE_VERSION = 1
"""Part of every DMM cache key: bump it when `train_dmm`'s arithmetic changes, so no stale DMM is reused."""
SCORES_CACHE_VERSION = 1
"""Part of every agreement-score cache key: bump it when `agreement_scores`'s arithmetic changes."""


def dmm_cache_path(teacher, dmm_clean: Dataset, *, num_classes: int, config: BeDKDConfig) -> Path:
    """Where `train_dmm` stores (and looks for) the DMM these inputs make, under the victim cache."""
    payload = {"version": DMM_CACHE_VERSION, "teacher": weights_digest(teacher), "data": fingerprint(dmm_clean),
               "num_classes": num_classes, "device": device().type,
               **({"precision": "fp16"} if precision() == "fp16" else {}),  # GPU DMMs were all bf16 before: keys kept
               "settings": {name: getattr(config, name) for name in DMM_SETTINGS}}
    return cache_dir() / "dmm" / cache_key(payload)


def train_dmm(teacher, tokenizer, dmm_clean: Dataset, *, num_classes: int, config: BeDKDConfig, cache: bool = True):
    """Copy the poisoned model and distil it on clean data whose labels are flipped; return the DMM.

    With `cache`, the DMM is saved (safetensors) at `dmm_cache_path` and reused by any later call with the same
    teacher weights, data and settings: chapter 5's BeDKD run reuses chapter 4's DMM instead of retraining it.
    """
    return _dmm_and_cache_hit(teacher, tokenizer, dmm_clean, num_classes=num_classes, config=config, cache=cache)[0]


def _dmm_and_cache_hit(teacher, tokenizer, dmm_clean: Dataset, *, num_classes: int, config: BeDKDConfig,
                       cache: bool):
    """`train_dmm`'s work; also says whether the DMM came from the cache (hashing the teacher only once)."""
    folder = dmm_cache_path(teacher, dmm_clean, num_classes=num_classes, config=config) if cache else None
    if folder is not None and (folder / METADATA).is_file():  # its files checked against their sha256 first
        dmm, _, _ = load_cached(folder, num_labels=num_classes)
        return dmm.eval(), True
    seed_everything(config.seed)
    flipped = Dataset.from_dict({"text": list(dmm_clean["text"]),
                                 "label": flip_labels(dmm_clean["label"], num_classes=num_classes)})
    batches = _fixed_batches(teacher, tokenizer, flipped, config=config, seed=config.seed)
    dmm = copy.deepcopy(teacher).train()
    optimizer, scaler = torch.optim.Adam(dmm.parameters(), lr=config.learning_rate), grad_scaler(precision())
    for _ in progress(range(config.dmm_epochs), desc="DMM", leave=False):
        for batch in batches:
            _distill_step(dmm, optimizer, batch, scaler=scaler, temperature=config.temperature_dmm, config=config,
                          sign=1)
    dmm.eval()
    if folder is not None:
        save_model(dmm, tokenizer, folder, {"settings": {name: getattr(config, name) for name in DMM_SETTINGS}})
    return dmm, False


# ---------------------------------------------------------------- stage 2: identification (chapter 4)

def agreement_scores(teacher, dmm, tokenizer, texts: list[str], *, max_length: int = 128, cache: bool = True) -> dict:
    """s(x) = mean over classes of |softmax(z_p) − softmax(z_d)|: low when the DMM still agrees with the teacher.

    Also returns both models' probabilities (`teacher_prob`, `dmm_prob`, the latter for `refine="direction"`) and
    predictions. With `cache`, the arrays are stored under the victim cache, keyed by both models' weights, the
    texts and `max_length`: chapter 5's BeDKD run reuses chapter 4's scores instead of recomputing them.
    """
    path = None
    if cache:
        payload = {"version": SCORES_CACHE_VERSION, "teacher": weights_digest(teacher), "dmm": weights_digest(dmm),
                   "texts": hashlib.sha256(json.dumps(texts).encode()).hexdigest(), "max_length": max_length,
                   "device": device().type}
        path = cache_dir() / "scores" / f"{cache_key(payload)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
    p_teacher = predict_proba(teacher, tokenizer, texts, max_length=max_length)
    p_dmm = predict_proba(dmm, tokenizer, texts, max_length=max_length)
    scores = {"score": np.abs(p_teacher - p_dmm).mean(axis=1), "teacher_pred": p_teacher.argmax(1),
              "dmm_pred": p_dmm.argmax(1), "teacher_prob": p_teacher, "dmm_prob": p_dmm}
    if path is not None:
        save_arrays_atomic(path, scores)
    return scores


# ---------------------------------------------------------------- stage 3: AKD (chapter 5)

def _label_rate(model, tokenizer, data: Dataset, *, max_length: int) -> float:
    """Share of `data`'s rows that `model` predicts as their given label."""
    predicted = predict_proba(model, tokenizer, list(data["text"]), max_length=max_length).argmax(1)
    return float((predicted == np.asarray(data["label"])).mean())


def dev_tolerance(*, config: BeDKDConfig, teacher_accuracy: float, n_dev: int) -> float:
    """Accuracy on dev the kept epoch may lose: `dev_tolerance`, or dev_k·sqrt(p(1−p)/n_dev) (at least 1/n_dev)."""
    if config.dev_rule == "fixed":
        return config.dev_tolerance
    p = teacher_accuracy
    return max(config.dev_k * float(np.sqrt(p * (1 - p) / n_dev)), 1.0 / n_dev)


def _epoch_key(row: dict, *, dev_floor: float) -> tuple:
    """Smallest is kept: dev accuracy not under the floor, fewest watched rows keeping their label, higher dev
    accuracy, later epoch."""
    return row["dev_accuracy"] < dev_floor, row["watch_label_rate"], -row["dev_accuracy"], -row["epoch"]


def _improved(row: dict, best: dict | None, *, dev_floor: float) -> bool:
    """Whether `row` beats `best` on the epoch rule by more than being later (what `patience` waits for)."""
    return best is None or _epoch_key(row, dev_floor=dev_floor)[:3] < _epoch_key(best, dev_floor=dev_floor)[:3]


def select_epoch(*, history: list[dict], dev_floor: float) -> int:
    """The epoch `akd`'s rule keeps from a history with watch and dev rates (it replays stored histories)."""
    return min(history, key=lambda row: _epoch_key(row, dev_floor=dev_floor))["epoch"]


def akd(teacher, tokenizer, *, clean: Dataset, poisoned: Dataset, config: BeDKDConfig, on_epoch=None,
        watch: Dataset | None = None, dev: Dataset | None = None):
    """Fresh copy of the poisoned model; each epoch trust-distil on clean data, then punish on `poisoned`.

    One Adam optimizer serves both phases. `on_epoch(epoch, student)` is called after each epoch. Given `watch`
    (identified rows not punished) and `dev` (clean rows not trained on), each epoch records how many watched rows
    keep their label and the dev accuracy, and the student of the epoch chosen by `config.holdout`'s rule is
    returned; otherwise the last epoch's. With `config.patience`, training stops once that rule's pick has not
    improved for so many epochs (the last history row then has `stopped: True`).
    """
    seed_everything(config.seed)
    trust = _fixed_batches(teacher, tokenizer, clean, config=config, seed=config.seed)
    punish = _fixed_batches(teacher, tokenizer, poisoned, config=config, seed=config.seed) if len(poisoned) else []
    student = copy.deepcopy(teacher).train()
    optimizer, scaler = torch.optim.Adam(student.parameters(), lr=config.learning_rate), grad_scaler(precision())
    step = dict(scaler=scaler, temperature=config.temperature_akd, config=config)
    selecting = watch is not None and len(watch) > 0 and dev is not None and len(dev) > 0
    if selecting:
        teacher_accuracy = _label_rate(teacher, tokenizer, dev, max_length=config.max_length)
        dev_floor = teacher_accuracy - dev_tolerance(config=config, teacher_accuracy=teacher_accuracy,
                                                     n_dev=len(dev))
        best_key, best_state, best_row = None, None, None
    history = []
    per_epoch = len(trust) if config.trust_batches is None else min(config.trust_batches, len(trust))
    for epoch in progress(range(1, config.akd_epochs + 1), desc="AKD", leave=False):
        first = (epoch - 1) * per_epoch
        turn = [trust[(first + i) % len(trust)] for i in range(per_epoch)]
        trust_loss = [_distill_step(student, optimizer, b, **step, sign=1) for b in turn]
        punish_loss = [_distill_step(student, optimizer, b, **step, sign=-1) for b in punish]
        history.append({"epoch": epoch, "trust_loss": float(np.mean(trust_loss)),
                        "punish_loss": float(np.mean(punish_loss)) if punish_loss else None})
        student.eval()
        if selecting:
            watch_rate = _label_rate(student, tokenizer, watch, max_length=config.max_length)
            dev_accuracy = _label_rate(student, tokenizer, dev, max_length=config.max_length)
            history[-1].update(watch_label_rate=watch_rate, dev_accuracy=dev_accuracy, dev_floor=dev_floor)
            if _improved(history[-1], best_row, dev_floor=dev_floor):
                best_row = history[-1]
            key = _epoch_key(history[-1], dev_floor=dev_floor)
            if best_key is None or key < best_key:
                best_key, best_state = key, {k: v.detach().clone() for k, v in student.state_dict().items()}
                best_epoch = epoch
        if on_epoch is not None:
            on_epoch(epoch, student)
        student.train()
        if selecting and config.patience is not None and epoch - best_row["epoch"] >= config.patience \
                and epoch < config.akd_epochs:
            history[-1]["stopped"] = True
            break
    if selecting:
        student.load_state_dict(best_state)
        for row in history:
            row["selected"] = row["epoch"] == best_epoch
    return student.eval(), history


# ---------------------------------------------------------------- the whole defense

def bedkd(*, victim, data: DefenderData, config: BeDKDConfig, curve_fn=None, oracle_rows=None) -> DefenseResult:
    """Run DMM → identification → AKD on a poisoned victim with the defender's data only.

    `oracle_rows` serves the `identify="oracle"` ablation only: the truly poisoned suspect rows, picked by the
    caller (`run_experiment`) from the oracle flags, of which n_poison + holdout are drawn with config.seed. It is
    refused with any other `identify`, so real flags can never slip into a normal run.
    With `rounds` > 1 the purified model is the next round's teacher, until a round's evidence supports no row
    to punish (that round trains nothing) or `rounds` have run; `flagged` is every round's punished rows.
    """
    if (config.identify == "oracle") != (oracle_rows is not None):
        raise DataError("oracle_rows is given exactly when identify='oracle' (an ablation run by run_experiment); "
                        f"got identify={config.identify!r} with oracle_rows={'set' if oracle_rows is not None else None}")
    result = _round(teacher=victim.model, tokenizer=victim.tokenizer, data=data, config=config, curve_fn=curve_fn,
                    oracle_rows=oracle_rows)
    if config.rounds == 1:
        return result
    done = [result]
    while len(done) < config.rounds and len(done[-1].flagged):
        step = _round(teacher=done[-1].model, tokenizer=victim.tokenizer, data=data, config=config,
                      curve_fn=curve_fn, oracle_rows=None, skip_if_none=True)
        done.append(step)
        if step.model is None:
            break
    kept = [r for r in done if r.model is not None]
    last = kept[-1]
    last.details["summary"]["rounds"] = [
        {k: r.details["summary"].get(k) for k in ("inferred_target", "n_identified", "selected_epoch", "warning")}
        | {"decision": (r.details["summary"].get("count") or {}).get("decision"), "trained": r.model is not None}
        for r in done]
    if "scores" in result.details:  # the victim's own agreement scores, as with one round
        last.details["scores"] = result.details["scores"]
    flagged = np.unique(np.concatenate([r.flagged for r in done])).astype(int)
    return DefenseResult(model=last.model, tokenizer=last.tokenizer, flagged=flagged, details=last.details)


def _round(*, teacher, tokenizer, data: DefenderData, config: BeDKDConfig, curve_fn, oracle_rows,
           skip_if_none: bool = False) -> DefenseResult:
    """One DMM → identification → AKD pass from `teacher`; with `skip_if_none`, no AKD (model None) when
    nothing is identified to punish."""
    teacher.eval()
    dmm_clean, akd_clean = split_clean(data.clean, num_classes=data.num_classes, dmm_per_class=config.dmm_per_class,
                                       clean_per_class=config.clean_per_class, seed=config.seed)
    suspect_texts = list(data.suspect["text"])
    scores = reference = None
    info_dmm = {}
    if config.identify == "agreement":
        dmm, from_cache = _dmm_and_cache_hit(teacher, tokenizer, dmm_clean, num_classes=data.num_classes,
                                             config=config, cache=True)
        info_dmm["dmm_from_cache"] = from_cache  # then the wall time excludes DMM training
        scores = agreement_scores(teacher, dmm, tokenizer, suspect_texts, max_length=config.max_length)
        reference = agreement_scores(teacher, dmm, tokenizer, list(akd_clean["text"]), max_length=config.max_length)
        reference["labels"] = np.asarray(akd_clean["label"])
        del dmm
    if config.identify == "oracle":
        order = np.random.default_rng(config.seed).permutation(np.asarray(oracle_rows, dtype=int))
        ranked, info = order[: config.n_poison + config.holdout], {"n_candidates": int(len(order))}
    else:
        ranked, info = identify_poisoned(scores=scores, labels=data.suspect["label"], reference=reference,
                                         config=config, n_rows=config.n_poison + config.holdout,
                                         num_classes=data.num_classes)
    watch = np.zeros(len(ranked), dtype=bool)  # every k-th identified row is watched, so both sets span the ranks
    n_watch = min(config.holdout, max(0, len(ranked) - config.n_poison)) if config.count == "fixed" else \
        int(round(len(ranked) * config.holdout / (config.n_poison + config.holdout)))  # the n_poison:holdout ratio
    if n_watch:
        step = len(ranked) / n_watch
        watch[(np.arange(n_watch) * step + step / 2).astype(int)] = True
    flagged, watched = ranked[~watch], ranked[watch]
    if len(flagged) == 0 and skip_if_none:
        return DefenseResult(model=None, tokenizer=tokenizer, flagged=flagged, details={"summary": info})
    if len(flagged) == 0:
        why = "n_poison = 0 asks for no punished rows" if config.n_poison == 0 else \
            "the evidence supports no row to punish" if "count" in info else \
            "BeDKD found no suspect sample under tau"
        warnings.warn(f"{why}: AKD runs trust distillation only", stacklevel=2)
        info["warning"] = f"{why}; AKD ran trust-only"
    identified = data.suspect.select(flagged.tolist())
    curve = []
    on_epoch = None
    if curve_fn is not None and config.curve_every:
        def on_epoch(epoch, student):
            if epoch % config.curve_every == 0 or epoch == config.akd_epochs:
                curve.append({"epoch": epoch, **curve_fn(student, tokenizer)})
    student, history = akd(teacher, tokenizer, clean=akd_clean, poisoned=identified, config=config, on_epoch=on_epoch,
                           watch=data.suspect.select(watched.tolist()), dev=dmm_clean)
    kept = next((row for row in history if row.get("selected")), history[-1])
    used = {"clean": len(dmm_clean) + len(akd_clean), "suspect": len(data.suspect), "dev": 0}
    details = {"summary": {**info_dmm, **info, "n_identified": int(len(flagged)), "n_watched": int(len(watched)),
                           "defender_rows": used,
                           "selected_epoch": kept["epoch"], "epochs_run": len(history),
                           "final_trust_loss": history[-1]["trust_loss"],
                           "final_punish_loss": history[-1]["punish_loss"]},
               "history": history, "watched_rows": watched.tolist()}
    if scores is not None:
        details["scores"] = {"rows": list(range(len(suspect_texts))), "values": scores["score"].tolist()}
    if curve:
        details["curve"] = curve
    return DefenseResult(model=student, tokenizer=tokenizer, flagged=flagged, details=details)
