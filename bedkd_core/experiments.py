"""Wire the stages together: data → attack → victim (cached) → defense → metrics → report.json.

Introduced in chapter 2; the CLI's `bedkd run` and every chapter's quick-scale run call `run_experiment`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from datasets import Dataset

from .attacks import SOURCE_ROW, AttackConfig, PoisonedTrain, make_attack
from .data import DataError, Splits, load_task
from .defenses import get_defense, make_defense_config, with_threat_model
from .defenses.base import DefenderData, DefenseConfig, DefenseResult, defender_view
from .metrics import detection_scores, evaluate, evaluate_defense
from .models import check_safetensors, describe_model, load_classifier, model_config, save_model
from .store import provenance, write_json_atomic
from .victim import Victim, VictimConfig, get_victim


@dataclass(frozen=True)
class Scale:
    """How big a run is: `quick` fits 2 CPU cores in minutes, `full` is the whole train split."""

    name: str
    train_size: int | None
    victim_epochs: int
    test_size: int | None
    clean_pool_per_class: int
    """Size per class of the defender's own clean pool, drawn from clean train rows outside the suspect set."""
    victim_batch_size: int = 32
    victim_batching: str = "shuffle"
    """How the victim's batches are cut (`VictimConfig.batching`)."""


SCALES = {
    # quick: one epoch of length-grouped batches of 16 and test samples of 400 rows, to fit the quick book build in
    # its 10-minute budget on 2 cores (benchmarks/bench_book.py). SST-2 BadNets, 2 CPU cores, seed 0, 800 test rows:
    # 56 s for CACC 0.851, ASR 0.999 (clean twin: CACC 0.860, floor 0.179), against 174 s for CACC 0.863, ASR 0.991
    # with two shuffled epochs of 32 (benchmarks/bench_victim.py --compare-quick measures both side by side). One
    # epoch of 32 at 1e-4 took 47 s but was unstable: its clean twin reached CACC 0.750 with a floor of 0.458.
    "quick": Scale("quick", train_size=2000, victim_epochs=1, test_size=400, clean_pool_per_class=400,
                   victim_batch_size=16, victim_batching="by_length"),
    # full: one epoch of the quick scale's length-grouped batches of 16 over the whole split, not three epochs of
    # shuffled batches of 32 as before (benchmarks/bench_full_cpu.py measures both side by side).
    "full": Scale("full", train_size=None, victim_epochs=1, test_size=None, clean_pool_per_class=400,
                  victim_batch_size=16, victim_batching="by_length"),
}


def get_scale(name: str | None = None) -> Scale:
    """The scale named, else $BEDKD_SCALE, else quick."""
    name = name or os.environ.get("BEDKD_SCALE", "quick")
    if name not in SCALES:
        raise DataError(f"unknown scale {name!r}: use one of {', '.join(SCALES)}")
    return SCALES[name]


def stratified_sample(data: Dataset, *, per_class: int | None = None, total: int | None = None, seed: int,
                      exclude: set[int] | None = None) -> list[int]:
    """Row indices drawn per class with a fixed seed (per_class rows each, or `total` rows in class proportion)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(data["label"])
    exclude = exclude or set()
    chosen = []
    for label in sorted(set(labels.tolist())):
        rows = [int(i) for i in np.flatnonzero(labels == label) if int(i) not in exclude]
        want = per_class if per_class is not None else round(total * len(rows) / (len(labels) - len(exclude)))
        if want > len(rows):
            raise DataError(f"class {label} has {len(rows)} rows available but {want} were asked for")
        chosen += rng.choice(rows, size=want, replace=False).tolist()
    return sorted(chosen)


@dataclass
class Prepared:
    """Everything a defense experiment needs, built once: data, poisoned train, test sets, victim."""

    splits: Splits
    attack: AttackConfig
    poisoned: PoisonedTrain
    clean_test: Dataset
    triggered_test: Dataset
    clean_pool: Dataset
    victim: Victim
    victim_config: VictimConfig
    scale: Scale

    @property
    def asr_target(self) -> int | None:
        """The target ASR counts; None when each triggered row carries its own (`shift`, `dual`)."""
        return attack_target(self.attack)

    def defender_data(self) -> DefenderData:
        """What the defender gets: its clean pool and the suspect train split, without the oracle flags."""
        return _defender_data(self.clean_pool, self.poisoned, self.splits)


def attack_target(attack: AttackConfig) -> int | None:
    """The one label a resolved attack's backdoor predicts, or None when it has several (`shift`, `dual`)."""
    return None if attack.label_mode == "shift" or attack.name == "dual" else attack.target_label


def _defender_data(clean_pool: Dataset, poisoned: PoisonedTrain, splits: Splits) -> DefenderData:
    return DefenderData(clean=defender_view(clean_pool), suspect=defender_view(poisoned.data),
                        num_classes=splits.num_classes)


def prepare(*, dataset: str, attack: AttackConfig, scale: str | None = None, model: str | None = None,
            seed: int = 0, trust_pickle: bool = False,
            check: Callable[[DefenderData], None] | None = None) -> Prepared:
    """Load the data, poison it, and train (or reuse) the victim: the shared start of every experiment.

    `check(defender_data)` runs once the data is built, before the victim is trained or loaded, so a defense
    short of data fails in seconds rather than after the victim's training.
    """
    scale_cfg = get_scale(scale)
    splits = load_task(dataset)
    attacker = make_attack(config=dataclasses.replace(attack, seed=seed), dataset=dataset)
    subset = victim_split(splits, scale=scale_cfg, seed=seed)
    train_rows = list(subset.train[SOURCE_ROW])
    poisoned = attacker.poison_train(subset)
    clean_test, triggered = splits.test, attacker.triggered_test(splits)
    if scale_cfg.test_size:
        clean_test = clean_test.select(_head_sample(len(clean_test), scale_cfg.test_size, seed))
        triggered = triggered.select(_head_sample(len(triggered), scale_cfg.test_size, seed))
    clean_pool = splits.train.select(clean_pool_rows(splits.train, scale=scale_cfg, seed=seed, train_rows=train_rows))
    if check is not None:
        check(_defender_data(clean_pool, poisoned, splits))
    victim_config = VictimConfig(model=model or os.environ.get("BEDKD_MODEL", "minilm"),
                                 epochs=scale_cfg.victim_epochs, batch_size=scale_cfg.victim_batch_size,
                                 batching=scale_cfg.victim_batching, seed=seed)
    describe = {"dataset": dataset, "attack": attacker.config.asdict(), "scale": scale_cfg.name}
    victim = get_victim(train=poisoned.data, num_labels=splits.num_classes, config=victim_config,
                        describe=describe, trust_pickle=trust_pickle)
    return Prepared(splits, attacker.config, poisoned, clean_test, triggered, clean_pool, victim, victim_config,
                    scale_cfg)


def victim_split(splits: Splits, *, scale: Scale, seed: int) -> Splits:
    """`splits` with only the victim's training rows (`victim_rows`), each remembering its row in the full split
    (column `SOURCE_ROW`), to which the paraphrase pools and the stored LM rewrites are aligned."""
    rows = victim_rows(splits.train, scale=scale, seed=seed)
    picked = splits.train.select(rows)
    train = Dataset.from_dict({"text": picked["text"], "label": picked["label"], SOURCE_ROW: rows})
    return dataclasses.replace(splits, train=train)


def victim_rows(train: Dataset, *, scale: Scale, seed: int) -> list[int]:
    """The train rows a victim of this scale learns from: a stratified subset, or (at full scale, or when the split
    is no bigger than the subset) every row but the defender's clean pool, held out before poisoning so that the
    pool never holds a row the victim trained on (nor the clean twin of a poisoned one)."""
    if scale.train_size is not None and len(train) > scale.train_size:
        return stratified_sample(train, total=scale.train_size, seed=seed)
    labels = np.asarray(train["label"])
    per_class = min(scale.clean_pool_per_class, int(np.bincount(labels).min()) // 2)
    held = set(stratified_sample(train, per_class=per_class, seed=seed + 1))
    return [i for i in range(len(train)) if i not in held]


def clean_pool_rows(train: Dataset, *, scale: Scale, seed: int, train_rows: list[int]) -> list[int]:
    """The defender's clean pool: rows per class drawn outside the victim's training rows `train_rows`."""
    return stratified_sample(train, per_class=min(scale.clean_pool_per_class, _smallest_class(train, train_rows)),
                             seed=seed + 1, exclude=set(train_rows))


def _smallest_class(train: Dataset, used_rows: list[int]) -> int:
    labels = np.delete(np.asarray(train["label"]), used_rows)
    return int(np.bincount(labels, minlength=int(np.max(train["label"])) + 1).min())


def _head_sample(n: int, size: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).permutation(n)[:size].tolist()) if n > size else list(range(n))


def pool_overlap(prepared: Prepared) -> int:
    """Clean-pool rows whose text and label the victim trained on (0 unless the split repeats a sentence)."""
    rows = victim_rows(prepared.splits.train, scale=prepared.scale, seed=prepared.victim_config.seed)
    trained = prepared.splits.train.select(rows)
    seen = set(zip(trained["text"], trained["label"]))
    return sum((text, label) in seen for text, label in zip(prepared.clean_pool["text"], prepared.clean_pool["label"]))


def clean_floor(prepared: Prepared) -> dict:
    """ASR of a victim trained on the same rows without poison: how low ASR can honestly go."""
    splits = prepared.splits
    rows = victim_rows(splits.train, scale=prepared.scale, seed=prepared.victim_config.seed)
    clean_train = splits.train.select(rows)
    describe = {"dataset": splits.name, "attack": {"name": "none"}, "scale": prepared.scale.name}
    clean_victim = get_victim(train=clean_train.select_columns(["text", "label"]), num_labels=splits.num_classes,
                              config=prepared.victim_config, describe=describe)
    metrics = evaluate(clean_victim.model, clean_victim.tokenizer, clean_test=prepared.clean_test,
                       triggered_test=prepared.triggered_test, target_label=prepared.asr_target,
                       cache=clean_victim.path)
    return {"asr": metrics["asr"], "cacc": metrics["cacc"]}


def evaluate_victim(prepared: Prepared) -> dict:
    """The victim's CACC and ASR on the prepared test sets (its predictions are cached with it)."""
    return evaluate(prepared.victim.model, prepared.victim.tokenizer, clean_test=prepared.clean_test,
                    triggered_test=prepared.triggered_test, target_label=prepared.asr_target,
                    cache=prepared.victim.path)


# ---------------------------------------------------------------- the harness: one defense on a prepared victim

def defense_config(name: str, *, scale: str, target_label: int, options: dict | None = None) -> DefenseConfig:
    """The typed config of defense `name` at `scale`, with `options` and what its threat model lets it know."""
    options = with_threat_model(name, dict(options or {}), target_label=target_label)
    return make_defense_config(name, scale=get_scale(scale).name, **options)


@dataclass
class DefenseRun:
    """One defense applied to a prepared victim: its result, metrics, detection scores and wall times."""

    name: str
    config: DefenseConfig
    result: DefenseResult
    metrics: dict
    """CACC and ASR after the defense (and FRR/FAR for an input filter): `metrics.evaluate_defense`."""
    detection: dict | None
    """Precision/recall of the suspect rows it flagged, against the oracle flags (None if it flags none)."""
    seconds: float
    eval_seconds: float

    @property
    def summary(self) -> dict:
        return self.result.details.get("summary", {})


class VictimModifiedError(RuntimeError):
    """A defense changed the victim's weights in place (every defense must work on a copy)."""


def run_defense(*, prepared: Prepared, name: str, config: DefenseConfig, clean_test: Dataset | None = None,
                triggered_test: Dataset | None = None) -> DefenseRun:
    """Run defense `name` on the prepared victim with the defender's data only, check that it left the victim
    unchanged, and evaluate it on the prepared test sets (or on the ones given)."""
    spec = get_defense(name)
    data = prepared.defender_data()
    spec.check_data(data, config)
    hooks = {}
    if "curve_fn" in config.hooks():
        hooks["curve_fn"] = _curve_fn(prepared)
    if "oracle_rows" in config.hooks():  # BeDKD's oracle ablation: row numbers, never the flags themselves
        hooks["oracle_rows"] = np.flatnonzero(prepared.poisoned.is_poisoned).tolist()
    checksum = _weights_checksum(prepared.victim.model)
    started = time.perf_counter()
    result = spec(victim=prepared.victim, data=data, config=config, **hooks)
    seconds = time.perf_counter() - started
    if _weights_checksum(prepared.victim.model) != checksum:
        raise VictimModifiedError(f"defense {name!r} modified the victim in place")
    started = time.perf_counter()
    metrics = evaluate_defense(result, clean_test=prepared.clean_test if clean_test is None else clean_test,
                               triggered_test=prepared.triggered_test if triggered_test is None else triggered_test,
                               target_label=prepared.asr_target)
    eval_seconds = time.perf_counter() - started
    detection = None
    if result.flagged is not None:
        detection = detection_scores(result.flagged, prepared.poisoned.is_poisoned)
        if result.details.get("watched_rows"):  # BeDKD's held-out identified rows (not punished)
            watched = detection_scores(result.details["watched_rows"], prepared.poisoned.is_poisoned)
            detection["watched_precision"] = watched["precision"]
    return DefenseRun(name, config, result, metrics, detection, seconds, eval_seconds)


def _weights_checksum(model) -> float:
    """A cheap checksum of a model's weights, to prove a defense left the victim untouched."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum().item() for p in model.parameters()))


def _curve_fn(prepared: Prepared, size: int = 400):
    """CACC/ASR on fixed test subsets, for training curves only (never used to choose anything)."""
    clean = prepared.clean_test.select(range(min(size, len(prepared.clean_test))))
    triggered = prepared.triggered_test.select(range(min(size, len(prepared.triggered_test))))

    def curve_fn(model, tokenizer):
        return evaluate(model, tokenizer, clean_test=clean, triggered_test=triggered,
                        target_label=prepared.asr_target)

    return curve_fn


# ---------------------------------------------------------------- one experiment → report.json

def run_experiment(*, dataset: str, attack: AttackConfig, defense: str = "none", defense_options: dict | None = None,
                   scale: str | None = None, model: str | None = None, seed: int = 0, out: str | Path | None = None,
                   with_floor: bool = True, trust_pickle: bool = False) -> dict:
    """Train or reuse the victim, apply the defense, evaluate; return (and optionally write) the report.

    Every input is checked before the victim is trained: options, output folder, data and the defense's budgets.
    """
    started = time.perf_counter()
    run_provenance = provenance()  # taken before the run: the code that ran is the code at this commit
    config = defense_config(defense, scale=get_scale(scale).name, options=defense_options,
                            target_label=attack.resolved(dataset).target_label)
    if out:
        check_out_dir(out)
    prepared = prepare(dataset=dataset, attack=attack, scale=scale, model=model, seed=seed, trust_pickle=trust_pickle,
                       check=lambda data: get_defense(defense).check_data(data, config))
    report = {
        "dataset": dataset,
        "attack": prepared.attack.asdict(),
        "defense": {"name": defense, **config.asdict()},
        "model": describe_model(prepared.victim_config.model),
        "scale": prepared.scale.name,
        "seed": seed,
        "sizes": {"victim_train": len(prepared.poisoned.data), "poisoned_rows": prepared.poisoned.poison_count,
                  "clean_test": len(prepared.clean_test), "triggered_test": len(prepared.triggered_test),
                  "clean_pool": len(prepared.clean_pool), "clean_pool_overlap": pool_overlap(prepared)},
        "victim_config": prepared.victim_config.asdict(),
        "victim": evaluate_victim(prepared),
        "clean_floor": clean_floor(prepared) if with_floor else None,
        "defended": None,
        "detection": None,
        "seconds": {"victim": round(prepared.victim.seconds, 1), "victim_from_cache": prepared.victim.from_cache,
                    "defense": 0.0},
    }
    if defense != "none":
        run = run_defense(prepared=prepared, name=defense, config=config)
        report["seconds"]["defense"] = round(run.seconds, 1)
        report.update(defended=run.metrics, detection=run.detection, defense_details=run.summary)
        if out:
            _save_defense_artifacts(Path(out), run.result, prepared)
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report["provenance"] = run_provenance
    if out:
        write_json_atomic(Path(out) / "report.json", report)
    return report


def check_out_dir(out: str | Path) -> None:
    """Fail before any work unless `out` is a folder or can be created as one (the results would be lost)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file; name a folder (it is created when missing)")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir():
        raise DataError(f"output folder {out} cannot be created: {parent} is a file; name another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"output folder {out} cannot be written: {parent} is not writable; name another folder")


def _save_defense_artifacts(out: Path, result, prepared: Prepared) -> None:
    """The purified model (safetensors) and per-sample scores with their oracle flags, for the chapters' plots."""
    save_model(result.model, result.tokenizer, out / "purified_model", {"source": str(prepared.victim.path)})
    scores = result.details.get("scores")
    if scores is not None:
        rows = [int(i) for i in scores["rows"]]
        columns = {"row": rows, "score": [float(s) for s in scores["values"]],
                   "is_poisoned": [bool(prepared.poisoned.is_poisoned[i]) for i in rows]}
        write_json_atomic(out / "scores.json", {"scores": columns}, indent=None)  # columns: a fifth of the size
    if "curve" in result.details:  # with the per-epoch losses (and watch rate / dev accuracy) beside it
        write_json_atomic(out / "curve.json", {"curve": result.details["curve"],
                                               "history": result.details.get("history", [])})


def defend_own_model(*, victim: str, clean: str, suspect: str, out: str | Path, options: dict | None = None,
                     trust_pickle: bool = False) -> dict:
    """BeDKD on a model the user brings: an HF folder (safetensors), a clean file and the suspect training file.

    The output folder, the model (a whole classifier: no weight may be missing), the files and BeDKD's budgets are
    checked before the defense starts.
    """
    from .data import read_table
    from .defenses.bedkd import bedkd, make_config

    check_out_dir(out)
    check_safetensors(victim, trust_pickle=trust_pickle)
    num_classes = model_config(victim).num_labels
    model, tokenizer = load_classifier(victim, num_labels=num_classes, trust_pickle=trust_pickle, new_head=False)
    options = dict(options or {})
    config = make_config(preset=options.pop("preset", "fixed"), **options)
    defender = DefenderData(clean=defender_view(read_table(clean, num_classes=num_classes)),
                            suspect=defender_view(read_table(suspect, num_classes=num_classes)),
                            num_classes=num_classes)
    missing = sorted(set(range(num_classes)) - set(defender.clean["label"]))
    if missing:
        raise DataError(f"{victim} has {num_classes} labels but {clean} has no rows of class(es) "
                        f"{', '.join(map(str, missing))}; give clean rows of every class the model predicts")
    get_defense("bedkd").check_data(defender, config)
    started = time.perf_counter()
    result = bedkd(victim=Victim(model, tokenizer, None, Path(victim), 0.0, True), data=defender, config=config)
    summary = {**result.details["summary"], "identified_rows": result.flagged.tolist()}
    out = Path(out)
    save_model(result.model, result.tokenizer, out / "purified_model", {"source": str(victim)})
    write_json_atomic(out / "report.json", {"victim": str(victim), "clean": str(clean), "suspect": str(suspect),
                                            "defense": {"name": "bedkd", **config.asdict()}, "summary": summary,
                                            "seconds": {"defense": round(time.perf_counter() - started, 1)},
                                            "provenance": provenance()})
    return summary
