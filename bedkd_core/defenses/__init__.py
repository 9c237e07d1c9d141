"""Defenses behind one interface: `DEFENSES[name](victim=..., data=DefenderData(...), config=...)`.

`none` and `bedkd` are the book's own; the baselines (one module each) are `finetune`, `fine_pruning`, `nad`
(model repair on the defender's clean rows), `strip`, `rap` (inference-time input filters: `reject(texts)`),
`onion` (inference-time input sanitiser: `details["sanitize"]`), `cube` and `bki` (training-set filtering and
retraining). Every baseline sees only `DefenderData` (no oracle flags) and never changes the victim in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..data import DataError
from . import bedkd as _bedkd
from . import bedkd_config as _bedkd_config
from . import bki as _bki
from . import cube as _cube
from . import fine_pruning as _fine_pruning
from . import finetune as _finetune
from . import nad as _nad
from . import onion as _onion
from . import rap as _rap
from . import strip as _strip
from ._common import NotRunnable, apply_preset
from .base import DefenderData, DefenseConfig, DefenseResult


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense: how to run it, its config class and presets, how to check its data, its kind.

    Calling the spec runs the defense: `DEFENSES[name](victim=..., data=..., config=..., **hooks)`, where
    `hooks` are what `config.hooks()` asks the harness for (BeDKD's training curve, its oracle ablation's rows).
    """

    name: str
    run: Callable[..., DefenseResult]
    config_cls: type
    kind: str
    presets: dict | None = None
    """scale (quick, full) → the options that scale sets; `options` given by the user override them."""
    check: Callable[[DefenderData, DefenseConfig], None] | None = None
    configure: Callable[..., DefenseConfig] | None = None
    """configure(scale=..., options=...) → the config, for a defense whose presets are not per scale (BeDKD's
    named presets, which the scale only defaults)."""

    def __call__(self, *, victim, data: DefenderData, config: DefenseConfig, **hooks) -> DefenseResult:
        return self.run(victim=victim, data=data, config=config, **hooks)

    def make_config(self, *, scale: str, options: dict) -> DefenseConfig:
        if self.configure is not None:
            return self.configure(scale=scale, options=options)
        if self.presets is not None:
            return apply_preset(self.config_cls, self.presets, scale, options, defense=self.name)
        if options:
            raise DataError(f"defense {self.name!r} takes no options, got {', '.join(options)}")
        return self.config_cls()

    def check_data(self, data: DefenderData, config: DefenseConfig) -> None:
        """Fail fast (a DataError naming the defense and what is missing) before any defense runs."""
        if self.check is not None:
            self.check(data, config)


def _no_defense(*, victim, data, config) -> DefenseResult:
    return DefenseResult(model=victim.model, tokenizer=victim.tokenizer)


DEFENSES = {spec.name: spec for spec in (
    DefenseSpec("none", _no_defense, DefenseConfig, "none"),
    DefenseSpec("bedkd", _bedkd.bedkd, _bedkd_config.BeDKDConfig, "model repair (distillation)",
                check=_bedkd.check, configure=_bedkd_config.configure),
    DefenseSpec("finetune", _finetune.finetune, _finetune.FineTuneConfig, "model repair", _finetune.PRESETS,
                _finetune.check),
    DefenseSpec("fine_pruning", _fine_pruning.fine_pruning, _fine_pruning.FinePruningConfig, "model repair",
                _fine_pruning.PRESETS, _fine_pruning.check),
    DefenseSpec("nad", _nad.nad, _nad.NADConfig, "model repair (distillation)", _nad.PRESETS, _nad.check),
    DefenseSpec("strip", _strip.strip, _strip.STRIPConfig, "input filter", _strip.PRESETS, _strip.check),
    DefenseSpec("rap", _rap.rap, _rap.RAPConfig, "input filter", _rap.PRESETS, _rap.check),
    DefenseSpec("onion", _onion.onion, _onion.ONIONConfig, "input sanitiser", _onion.PRESETS, _onion.check),
    DefenseSpec("cube", _cube.cube, _cube.CUBEConfig, "data filter + retraining", _cube.PRESETS, _cube.check),
    DefenseSpec("bki", _bki.bki, _bki.BKIConfig, "data filter + retraining", _bki.PRESETS, _bki.check),
)}
"""Every defense by name: `none`, BeDKD and the eight baselines, registered the same way."""


def get_defense(name: str) -> DefenseSpec:
    if name not in DEFENSES:
        raise DataError(f"unknown defense {name!r}: use one of {', '.join(DEFENSES)}")
    return DEFENSES[name]


def make_defense_config(name: str, *, scale: str = "quick", **options) -> DefenseConfig:
    """The typed config of defense `name` at `scale` (quick or full), with `options` overriding its fields.

    At quick scale BeDKD defaults to its `quick` preset, at full scale to `fixed`; each baseline has a quick and a
    full preset (`PRESETS` in its module). Unknown options raise a DataError listing the valid fields.
    """
    return get_defense(name).make_config(scale=scale, options=options)


def with_threat_model(name: str, options: dict, *, target_label: int) -> dict:
    """`options` plus what a defense's threat model lets the defender know, for the harness.

    RAP's defender knows the label it protects (Yang et al. 2021), which is the attack's target, so it is passed
    unless the user named one. This is one label for the whole task, never anything per row.
    """
    if name == "rap" and options.get("protected_label") is None:
        return {**options, "protected_label": target_label}
    return dict(options)


def check_defense_data(name: str, config: DefenseConfig, data: DefenderData) -> None:
    """Fail fast (DataError naming the defense and what is missing) before any defense runs."""
    get_defense(name).check_data(data, config)


__all__ = ["DEFENSES", "DefenseSpec", "DefenderData", "DefenseConfig", "DefenseResult", "NotRunnable",
           "get_defense", "make_defense_config", "with_threat_model", "check_defense_data"]
