"""Defenses behind one interface: `DEFENSES[name](victim=..., data=DefenderData(...), config=...)`.

`none` and `bedkd` are the book's own; the baselines (one module each) are `finetune`, `fine_pruning`, `nad`
(model repair on the defender's clean rows), `strip`, `rap` (inference-time input filters: `reject(texts)`),
`onion` (inference-time input sanitiser: `details["sanitize"]`) and `cube` (training-set filtering and
retraining). Every baseline sees only `DefenderData` (no oracle flags) and never changes the victim in place.
"""
from __future__ import annotations

import dataclasses
import typing

from ..data import DataError
from . import cube as _cube
from . import fine_pruning as _fine_pruning
from . import finetune as _finetune
from . import nad as _nad
from . import onion as _onion
from . import rap as _rap
from . import strip as _strip
from ._common import NotRunnable, apply_preset
from .base import DefenderData, DefenseConfig, DefenseResult
from .bedkd import make_config as make_bedkd_config


def _no_defense(*, victim, data, config) -> DefenseResult:
    return DefenseResult(model=victim.model, tokenizer=victim.tokenizer)


def _bedkd(*, victim, data, config, curve_fn=None, oracle_rows=None) -> DefenseResult:
    from .bedkd import bedkd

    return bedkd(victim=victim, data=data, config=config, curve_fn=curve_fn, oracle_rows=oracle_rows)


BASELINES = {
    # name: (module, defense function, config class, kind)
    "finetune": (_finetune, _finetune.finetune, _finetune.FineTuneConfig, "model repair"),
    "fine_pruning": (_fine_pruning, _fine_pruning.fine_pruning, _fine_pruning.FinePruningConfig, "model repair"),
    "nad": (_nad, _nad.nad, _nad.NADConfig, "model repair (distillation)"),
    "strip": (_strip, _strip.strip, _strip.STRIPConfig, "input filter"),
    "rap": (_rap, _rap.rap, _rap.RAPConfig, "input filter"),
    "onion": (_onion, _onion.onion, _onion.ONIONConfig, "input sanitiser"),
    "cube": (_cube, _cube.cube, _cube.CUBEConfig, "data filter + retraining"),
}

DEFENSES = {"none": _no_defense, "bedkd": _bedkd, **{name: entry[1] for name, entry in BASELINES.items()}}

KINDS = {"none": "none", "bedkd": "model repair (distillation)", **{n: e[3] for n, e in BASELINES.items()}}


def make_defense_config(name: str, *, scale: str = "quick", **options) -> DefenseConfig:
    """The typed config of defense `name` at `scale` (quick or full), with `options` overriding its fields.

    At quick scale BeDKD defaults to its `quick` preset; each baseline has a quick and a full preset
    (`PRESETS` in its module). Unknown options raise a DataError listing the valid fields.
    """
    if name not in DEFENSES:
        raise DataError(f"unknown defense {name!r}: use one of {', '.join(DEFENSES)}")
    if name == "bedkd":
        preset = options.pop("preset", None) or ("quick" if scale == "quick" else "fixed")
        return make_bedkd_config(preset=preset, **options)
    if name in BASELINES:
        module, _, config_cls, _ = BASELINES[name]
        return apply_preset(config_cls, module.PRESETS, scale, options, defense=name)
    if options:
        raise DataError(f"defense {name!r} takes no options, got {', '.join(options)}")
    return DefenseConfig()


def with_threat_model(name: str, options: dict, *, target_label: int) -> dict:
    """`options` plus what a defense's threat model lets the defender know, for the harness (run_experiment, compare).

    RAP's defender knows the label it protects (Yang et al. 2021), which is the attack's target, so it is passed
    unless the user named one. This is one label for the whole task, never anything per row.
    """
    if name == "rap" and options.get("protected_label") is None:
        return {**options, "protected_label": target_label}
    return dict(options)


def check_defense_data(name: str, config: DefenseConfig, data: DefenderData) -> None:
    """Fail fast (DataError naming the defense and what is missing) before any defense runs."""
    if name in BASELINES:
        BASELINES[name][0].check(data, config)
    elif name == "bedkd":
        from .bedkd import split_clean

        try:
            split_clean(data.clean, num_classes=data.num_classes, dmm_per_class=config.dmm_per_class,
                        clean_per_class=config.clean_per_class, seed=config.seed)
        except DataError as err:
            raise DataError(f"defense 'bedkd': {err}") from None


# ---------------------------------------------------------------- typed options, for the CLI

def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in str(text).split(",") if x.strip())


def field_parser(annotation) -> typing.Callable[[str], object]:
    """A str → value parser for a config field's annotation (`int`, `float | None`, `tuple[float, float]`, ...)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "").replace("|None", "").replace("Optional[", "").rstrip("]") if "None" in text else text
    if text.startswith("tuple"):
        return _parse_floats
    return {"int": int, "float": float, "bool": _parse_bool}.get(text, str)


def config_fields(name: str) -> dict[str, typing.Callable[[str], object]]:
    """{field: parser} of a defense's config."""
    if name == "bedkd":
        from .bedkd import BeDKDConfig as cls
    elif name in BASELINES:
        cls = BASELINES[name][2]
    else:
        return {}
    return {f.name: field_parser(f.type) for f in dataclasses.fields(cls)}


OPTION_HELP = {
    "clean_per_class": "clean rows per class the defense trains on (finetune, fine_pruning, nad)",
    "epochs": "training epochs (finetune, fine_pruning: fine-tuning; nad: distillation; rap: RAP-word training)",
    "learning_rate": "learning rate (Adam/AdamW; rap: the RAP word's gradient step)",
    "batch_size": "batch size",
    "max_length": "max tokens per input",
    "layers": "fine_pruning: prune the last N layers' FFN units; nad: align the last N layers (0 = all)",
    "prune_step": "fine_pruning: share of units added per pruning step",
    "max_prune_ratio": "fine_pruning: most units pruned, as a share of a layer's units",
    "max_acc_drop": "fine_pruning: stop before clean accuracy drops more than this",
    "teacher_epochs": "nad: epochs of the teacher's clean fine-tuning",
    "beta": "nad: weight of each layer's attention-transfer loss",
    "power": "nad: exponent p of the attention map mean |h|^p",
    "repeat": "strip: perturbed copies per input",
    "swap_ratio": "strip: share of words replaced per copy",
    "frr": "strip, rap: false rejection rate on clean rows that sets the threshold",
    "threshold_per_class": "strip, rap: held-out clean rows per class for the threshold",
    "source_per_class": "strip: clean rows per class whose words are mixed in",
    "rap_trigger": "rap: the RAP word (one vocabulary token)",
    "prob_range": "rap: wanted drop of the protected label's probability, lo,hi",
    "optimizer": "rap: adam or sgd (the reference's plain gradient step) for the RAP word",
    "train_per_class": "rap: clean rows per class set aside to train the RAP word",
    "protected_label": "rap: the label to protect (default: the attack's target, which RAP's defender knows)",
    "components": "cube: PCA dimensions before HDBSCAN",
    "min_cluster_size": "cube: HDBSCAN min_cluster_size (0 = 2%% of rows)",
    "min_samples": "cube: HDBSCAN min_samples (0 = min(100, 5%% of rows))",
    "drop_share": "cube: drop non-largest clusters smaller than this share of their label",
    "retrain": "cube: retrain a fresh model on the kept rows (true/false)",
    "retrain_epochs": "cube: retraining epochs (default: the victim's)",
    "backbone": "cube: model to retrain from (default: the victim's backbone)",
    "lm": "onion: causal LM (auto, gpt2, smollm2, or a hub id / folder)",
    "threshold": "onion: fixed suspicion threshold (default: calibrated on clean rows)",
    "word_quantile": "onion: quantile of clean words' suspicion scores used as the threshold",
    "calibrate_per_class": "onion: clean rows per class for calibrating the threshold",
    "eval_rows": "onion: evaluate only the first N rows of each test set",
    "max_tokens": "onion: max LM tokens per text",
}


def cli_options(exclude_fields: typing.Iterable[str] = ("seed",)) -> list[tuple[str, str, typing.Callable, str, tuple[str, ...]]]:
    """(flag, field, type, help, defenses using it) for every baseline config field, one entry per field name.

    `seed` is left out by default (it would clash with the experiment's --seed). A flag shared by several
    defenses sets the same-named field of whichever defense runs; use `options_for` to keep the given ones.
    """
    seen: dict[str, list] = {}
    for name in BASELINES:
        for field, parser in config_fields(name).items():
            if field in exclude_fields:
                continue
            if field not in seen:
                seen[field] = ["--" + field.replace("_", "-"), field, parser, OPTION_HELP.get(field, field), []]
            seen[field][4].append(name)
    return [(flag, field, parser, help_text, tuple(users)) for flag, field, parser, help_text, users in seen.values()]


def options_for(name: str, given: dict) -> dict:
    """The given options (field → value, None = not given) that defense `name` takes; others raise a DataError."""
    given = {k: v for k, v in given.items() if v is not None}
    fields = config_fields(name)
    stray = sorted(set(given) - set(fields))
    if stray:
        raise DataError(f"option(s) {', '.join(stray)} do not apply to defense {name!r}; its options are "
                        f"{', '.join(sorted(fields)) or 'none'}")
    return given


__all__ = ["DEFENSES", "BASELINES", "KINDS", "DefenderData", "DefenseConfig", "DefenseResult", "NotRunnable",
           "make_defense_config", "check_defense_data", "config_fields", "cli_options", "options_for"]
