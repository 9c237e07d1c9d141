"""The one interface every defense implements, and what a defender is allowed to see."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from datasets import Dataset

from ..options import label, validate

ORACLE_COLUMNS = ("is_poisoned", "poisoned")


class OracleLeakError(RuntimeError):
    """A defense was handed the oracle poison flags; only metrics may read them."""


def defender_view(data: Dataset) -> Dataset:
    """The suspect data as a defender may see it: `text` and `label`, nothing else."""
    return data.select_columns(["text", "label"])


@dataclass(frozen=True)
class DefenderData:
    """Everything a defender gets besides the victim: its own small clean set, the unverified training
    split (no poison flags), and optionally a clean dev set for thresholds."""

    clean: Dataset
    suspect: Dataset
    num_classes: int
    dev: Dataset | None = None

    def __post_init__(self):
        for name in ("clean", "suspect", "dev"):
            table = getattr(self, name)
            if table is not None and set(table.column_names) & set(ORACLE_COLUMNS):
                raise OracleLeakError(f"the defender's {name} set carries oracle poison flags {table.column_names}")


@dataclass
class DefenseResult:
    """What a defense returns.

    model/tokenizer: the repaired (or unchanged) classifier. flagged: indices of suspect rows the defense
    identified as poisoned, if it identifies any. reject: for inference-time defenses, a function mapping
    texts to a boolean mask of inputs refused. details: anything worth saving (scores, curves).
    """

    model: object
    tokenizer: object
    flagged: np.ndarray | None = None
    reject: Callable[[list[str]], np.ndarray] | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DefenseConfig:
    """Base of every defense's typed config: its fields are checked against their types and choices."""

    def __post_init__(self):
        validate(self, what=label(type(self)))

    def hooks(self) -> frozenset[str]:
        """What this config asks the harness to hand the defense besides its data (none by default)."""
        return frozenset()

    def asdict(self) -> dict:
        return dataclasses.asdict(self)
