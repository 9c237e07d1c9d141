"""BeDKD's options: every hyperparameter on one typed config, the named presets, and the preset of each scale."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..data import DataError
from ..options import option
from ..training import Batching
from .base import DefenseConfig


@dataclass(frozen=True)
class BeDKDConfig(DefenseConfig):
    """Every BeDKD hyperparameter. `faithful` is the reference code's behaviour; `fixed` (default) mends it."""

    preset: Literal["fixed", "faithful", "quick", "adaptive", "quick-adaptive"] = option(
        "fixed", "named preset the other options override")
    dmm_per_class: int = option(80, "clean rows per class the DMM trains on")
    clean_per_class: int = option(320, "clean rows per class AKD trust-distils on")
    dmm_epochs: int = option(20, "DMM training epochs")
    akd_epochs: int = option(50, "AKD epochs")
    trust_batches: int | None = option(
        None,
        "Trust batches per AKD epoch, taken in turn from the fixed clean batches so that every clean row "
        "is used (None: all of them every epoch, as the reference). The punish batches run every epoch.")
    temperature_dmm: float = option(1.5, "distillation temperature of the DMM")
    temperature_akd: float = option(2.5, "distillation temperature of AKD")
    alpha: float = option(0.3, "weight of the cross-entropy term (1 - alpha: distillation)")
    kl_weight: float = option(
        1.0,
        "Weight of the KL term inside the distillation part (1 in the reference; 0 drops it, an "
        "ablation).")
    hidden_weight: float = option(
        1.0,
        "Weight of the hidden-state MSE term (1 in the reference; 0 drops it, an ablation).")
    tau: float = option(0.1, "agreement-score threshold under which a suspect row is a candidate")
    n_poison: int = option(32, "identified rows AKD punishes")
    count: Literal["fixed", "evidence"] = option(
        "fixed",
        "How many identified rows to take: `fixed` (n_poison + holdout) or `evidence` (no more than the "
        "defender's evidence supports: the candidates beyond every clean reference row of their class, "
        "and no more than the target class's excess under tau over the clean reference's rate; punished "
        "and held-out rows keep the n_poison : holdout ratio). Needs scan=`rank` and refine=`direction`.")
    targets: Literal["one", "several"] = option(
        "one",
        "With count=`evidence`: punish the candidates of `one` target class (the class with the most rows "
        "beyond the clean reference) or of `several`, every class whose such rows stand out from what its "
        "clean rows give by chance (two backdoors with two targets), each target with as many rows as "
        "one target would get.")
    min_punish: int = option(
        4,
        "With count=`evidence`: when the evidence supports fewer punished rows than this, punish none "
        "(trust distillation only) rather than punish rows that may be clean.")
    max_candidates: int | None = option(
        None,
        "Faithful: stop scanning the suspect set in file order after this many candidates (128).")
    identify: Literal["agreement", "random", "oracle"] = option(
        "agreement",
        "`agreement` (the DMM, BeDKD's own), `random` (n_poison random suspect rows: BeDKD without its "
        "DMM) or `oracle` (an ablation: n_poison truly poisoned rows, which the caller must hand over as "
        "`oracle_rows`).")
    scan: Literal["file_order", "rank"] = option(
        "rank",
        "`file_order` (reference: first candidates under tau, keep n_poison + 1) or `rank` (whole set, "
        "ranked).")
    infer_target: bool = option(
        True,
        "Keep only candidates whose label is the class most over-represented under tau, relative to clean"
        " data.")
    refine: Literal["none", "direction"] = option(
        "direction",
        "Order of the rank scan's candidates: `none` (lowest score first, as the reference) or "
        "`direction` (highest DMM log-odds for the given label first: the backdoor mapping survives in "
        "the DMM, a flipped clean one does not; rows the victim itself is unsure of score low without "
        "being poison). With `direction`, when more candidates than needed beat every clean reference row"
        " of their class, the picks are spread evenly over those ranks, so that they cover every trigger "
        "rather than the strongest one.")
    mask_padding: bool = option(
        True,
        "Average the hidden-state MSE over real tokens only (the reference averages over padding too).")
    punish_bound: float | None = option(
        3.0,
        "Stop pushing a punish batch once its loss exceeds this bound (the reference's negated loss is "
        "unbounded).")
    holdout: int = option(
        16,
        "Identified rows kept out of AKD to watch the backdoor (every k-th of the n_poison + holdout "
        "identified): the student is taken from the epoch where the fewest of them keep their (target) "
        "label, among epochs whose accuracy on the DMM's clean rows (true labels; AKD never trains on "
        "them) is within `dev_tolerance` of the teacher's. 0 keeps the last epoch, as the reference does.")
    patience: int | None = option(
        None,
        "Stop AKD once the epoch rule's pick has not improved for this many epochs (no fewer watched rows "
        "keeping their label, no higher dev accuracy within the band); None runs every epoch. Needs the "
        "watched rows (holdout > 0).")
    dev_tolerance: float = option(0.02, "accuracy the kept epoch may lose on the DMM's clean rows")
    dev_rule: Literal["fixed", "stderr"] = option(
        "fixed",
        "Width of the epoch rule's dev band: `fixed` (dev_tolerance) or `stderr` (dev_k standard errors "
        "of the teacher's dev accuracy p, k·sqrt(p(1-p)/n_dev), and at least one dev row: a band as wide "
        "as the dev set's own noise).")
    dev_k: float = option(2.0, "With dev_rule=`stderr`: standard errors the kept epoch may lose on dev")
    cache_teacher: bool = option(
        True,
        "Compute the frozen teacher's outputs once per fixed batch (the reference recomputes them every "
        "step).")
    learning_rate: float = option(3e-5, "Adam learning rate of AKD and the DMM")
    batch_size: int = option(16, "batch size")
    max_length: int = option(128, "max tokens per input")
    batching: Batching = option(
        "shuffle",
        "How the fixed DMM and AKD batches are cut: `shuffle` (the reference: one shuffle, cut in order) "
        "or `by_length` (rows of similar length together, the batches then shuffled: "
        "`VictimConfig.batching`).")
    seed: int = option(42, "random seed of BeDKD's sampling and training")
    curve_every: int = option(0, "Record CACC/ASR on the curve set every N AKD epochs (0 = never).")
    rounds: int = option(
        1,
        "Run the whole defense again on the purified model, up to this many times in all, until the evidence "
        "supports no row to punish: one backdoor per round when several have different targets. Needs "
        "count=`evidence` (a fixed count would punish clean rows once the backdoors are gone).")

    def __post_init__(self):
        super().__post_init__()
        if self.count == "evidence" and (self.identify, self.scan, self.refine) != ("agreement", "rank", "direction"):
            raise DataError("count='evidence' weighs the DMM's evidence: it needs identify='agreement', "
                            f"scan='rank' and refine='direction' (got {self.identify!r}, {self.scan!r}, "
                            f"{self.refine!r})")
        if self.targets == "several" and self.count != "evidence":
            raise DataError("targets='several' decides the targets from the evidence: it needs count='evidence'")
        if self.trust_batches is not None and self.trust_batches < 1:
            raise DataError(f"trust_batches={self.trust_batches}: give at least 1, or None for every clean batch")
        if self.patience is not None and self.patience < 1:
            raise DataError(f"patience={self.patience}: give at least 1 epoch, or None to run every epoch")
        if self.rounds < 1 or (self.rounds > 1 and self.count != "evidence"):
            raise DataError(f"rounds={self.rounds}: give 1, or more than 1 with count='evidence' (it stops when "
                            "the evidence supports no row to punish; a fixed count never would)")

    def hooks(self) -> frozenset[str]:
        """The training curve when `curve_every` asks for one; the truly poisoned rows for the oracle ablation."""
        return frozenset({"curve_fn"} if self.curve_every else ()) | \
            frozenset({"oracle_rows"} if self.identify == "oracle" else ())


PRESETS = {
    "fixed": dict(batching="by_length", trust_batches=20, patience=10),
    "faithful": dict(scan="file_order", max_candidates=128, infer_target=False, refine="none", mask_padding=False,
                     punish_bound=None, holdout=0),
    "quick": dict(dmm_per_class=64, clean_per_class=64, dmm_epochs=10, akd_epochs=12, batching="by_length"),
}
_ADAPTIVE = dict(count="evidence", dev_rule="stderr")
PRESETS |= {"adaptive": {**PRESETS["fixed"], **_ADAPTIVE}, "quick-adaptive": {**PRESETS["quick"], **_ADAPTIVE}}
"""Named presets; `quick` shrinks the fixed preset to run in minutes on 2 CPU cores.

fixed keeps the reference's data (320 clean rows per class for AKD) and up to 50 epochs of two punish batches, but
cuts batches by length, takes 20 of the 40 trust batches per epoch in turn, so every clean row is still used, and
stops once its epoch rule's pick has not improved for 10 epochs (`patience`). With the full scale's one-epoch
victim, benchmarks/bench_full_cpu.py times a full-scale SST-2 AddSent cell against the settings before, side by
side, and checks the quality; results/benchmarks/full-cpu.json (and the README's benchmark line) holds what it
measured.

quick also cuts its batches by length (half the padding, about a third less time on a CPU). It trades clean rows for
epochs: 12 epochs of 8 trust + 2 punish batches, not 6 of 16 + 2. The punished
rows need about that many ascent steps before they lose the target label (SST-2 AddSent, CPU, seed 0, on the
earlier quick victim of two shuffled epochs: the watched rows still kept it at epoch 5 of 6, ASR 0.87; with 12
epochs ASR 0.014, CACC unchanged). `adaptive` is fixed for a defender who does not know the poison rate: it
punishes only as many rows as its evidence supports and sizes the epoch rule's dev band by the dev set's standard
error; `quick-adaptive` is the same change on quick."""


def make_config(*, preset: str = "fixed", **overrides) -> BeDKDConfig:
    if preset not in PRESETS:
        raise DataError(f"unknown BeDKD preset {preset!r}: use one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(BeDKDConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise DataError(f"unknown BeDKD option(s) {', '.join(sorted(unknown))}: valid are {', '.join(sorted(fields))}")
    return BeDKDConfig(**{**PRESETS[preset], "preset": preset, **overrides})


SCALE_PRESETS = {"quick": "quick", "full": "fixed"}
"""The preset each scale defaults to."""


def configure(*, scale: str, options: dict) -> BeDKDConfig:
    """The config for `scale` (its default preset unless `options` name one), with `options` overriding; an
    option given as None sets None (`punish_bound=None`: no bound; `trust_batches=None`: every batch)."""
    if scale not in SCALE_PRESETS:
        raise DataError(f"unknown scale {scale!r} for bedkd: use one of {', '.join(SCALE_PRESETS)}")
    if options.get("preset") is None:
        options = {k: v for k, v in options.items() if k != "preset"}
    return make_config(**{"preset": SCALE_PRESETS[scale], **options})
