"""Defenses behind one interface: `DEFENSES[name](victim=..., data=DefenderData(...), config=...)`."""
from __future__ import annotations

from ..data import DataError
from .base import DefenderData, DefenseConfig, DefenseResult
from .bedkd import make_config as make_bedkd_config


def _no_defense(*, victim, data, config) -> DefenseResult:
    return DefenseResult(model=victim.model, tokenizer=victim.tokenizer)


def _bedkd(*, victim, data, config, curve_fn=None) -> DefenseResult:
    from .bedkd import bedkd

    return bedkd(victim=victim, data=data, config=config, curve_fn=curve_fn)


DEFENSES = {"none": _no_defense, "bedkd": _bedkd}


def make_defense_config(name: str, *, scale: str = "quick", **options) -> DefenseConfig:
    """The typed config of defense `name`; at quick scale BeDKD defaults to its `quick` preset."""
    if name not in DEFENSES:
        raise DataError(f"unknown defense {name!r}: use one of {', '.join(DEFENSES)}")
    if name == "bedkd":
        preset = options.pop("preset", None) or ("quick" if scale == "quick" else "fixed")
        return make_bedkd_config(preset=preset, **options)
    if options:
        raise DataError(f"defense {name!r} takes no options, got {', '.join(options)}")
    return DefenseConfig()


__all__ = ["DEFENSES", "DefenderData", "DefenseConfig", "DefenseResult", "make_defense_config"]
