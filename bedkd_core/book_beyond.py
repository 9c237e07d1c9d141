"""Chapter 7's plumbing: BeDKD beyond its published settings (grids `beyond-rate` and `beyond-attack`).

The live part poisons quick-scale training sets without training anything; the rest reads the grids' finished
cells through the sweep's status machinery (`book_grid`) and `book_data.cell_report` / `cell_scores`. A cell
that has not finished is left out of the tables and named once, in the grid's coverage line.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from . import book_grid, store
from .book_data import cell_report, cell_scores
from .book_grid import grid_statuses

DEFENSES = ("none", "bedkd-fixed", "bedkd-adaptive", "bedkd-all-classes", "bedkd-rounds", "bedkd-several",
            "finetune", "nad", "rap")
"""The defenses of both grids, in the order the tables show them (`none`: the undefended victim; optional cells
of `beyond-attack`: `bedkd-all-classes`, the quick preset without target inference, `bedkd-rounds`,
quick-adaptive rerun on its own purified model, and `bedkd-several`, quick-adaptive with several targets)."""
BEDKD = ("bedkd-fixed", "bedkd-adaptive")
POISONED, CLEAN = "poisoned (oracle)", "clean (oracle)"
"""The two kinds of suspect rows in `scores_frame`, named after the oracle flag that tells them apart."""


def condition_name(*, dataset: str, attack: str) -> str:
    """'sst2 · badnets-shift': how the chapter names one condition (a dataset and an attack label)."""
    return f"{dataset} · {attack}"


# ---------------------------------------------------------------- the live part: poisoned training sets

def poisoned_train(*, dataset: str, attack, scale: str = "quick", seed: int = 0):
    """(clean training rows, PoisonedTrain) of a cell: the rows its victim learns from, poisoned by `attack`
    (an AttackConfig) with the cell's seed, as `experiments.prepare` builds them; no victim is trained."""
    from .attacks import make_attack
    from .data import load_task
    from .experiments import get_scale, victim_rows

    splits = load_task(dataset)
    rows = victim_rows(splits.train, scale=get_scale(scale), seed=seed)
    subset = dataclasses.replace(splits, train=splits.train.select(rows) if rows else splits.train)
    attacker = make_attack(config=dataclasses.replace(attack, seed=seed), dataset=dataset)
    return subset.train, attacker.poison_train(subset)


def label_spread(*, dataset: str, attacks: dict, scale: str = "quick", seed: int = 0) -> pd.DataFrame:
    """Per attack (label → AttackConfig) and class: the poisoned training rows that carry that label, how many
    of them were relabelled to it, and their share of all poisoned rows and of the class's rows."""
    from .data import LABEL_NAMES

    names, out = LABEL_NAMES[dataset], []
    for label, attack in attacks.items():
        clean, poisoned = poisoned_train(dataset=dataset, attack=attack, scale=scale, seed=seed)
        flags = poisoned.is_poisoned[: len(clean)]  # rows an attack appends (SOS) are never poisoned
        given = np.asarray(poisoned.data["label"])[: len(clean)]
        relabelled = flags & (given != np.asarray(clean["label"]))
        for c, name in enumerate(names):
            in_class = flags & (given == c)
            out.append({"dataset": dataset, "attack": label, "label": name,
                        "poisoned rows": int(in_class.sum()), "relabelled": int((relabelled & in_class).sum()),
                        "share of poisoned rows": float(in_class.sum() / max(1, flags.sum())),
                        "share of the class": float(in_class.sum() / max(1, (given == c).sum()))})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the grids' finished cells

def _statuses(grid: str) -> tuple[str, list]:
    """The grid's name, and its cells with their states (an optional cell only once it has finished)."""
    return grid_statuses(grid)


def coverage_line(*, grid: str) -> str:
    """`book_grid.coverage_line`: 'grid: N of M cells with the current settings; not run: sst2/dual (all), …'."""
    return book_grid.coverage_line(grid=grid)


def _asr_columns(report: dict) -> dict:
    """The ASR of each backdoor of a two-backdoor attack, victim and defended, where the report has them."""
    columns = {}
    for part in ("victim", "defended"):
        for name, asr in ((report.get(part) or {}).get("asr_by_backdoor") or {}).items():
            columns[f"{part} ASR ({name})"] = asr
    return columns


def condition_rows(*, grid: str, defenses: tuple[str, ...] = DEFENSES) -> pd.DataFrame:
    """One row per finished cell of `grid` among `defenses`: victim, clean floor, identification, count
    decision, the AKD epoch kept and the defended model (the undefended `none` cell's model is its victim)."""
    from . import sweep

    rows = []
    for status in _statuses(grid)[1]:
        cell = status.cell
        if status.state != sweep.DONE or cell.defense not in defenses:
            continue
        report = cell_report(cell.dir(store.RESULTS_DIR))
        victim, details = report["victim"], report.get("defense_details") or {}
        defended = report.get("defended") or victim
        detection = report.get("detection") or {}
        rows.append({
            "condition": condition_name(dataset=cell.dataset, attack=cell.attack), "dataset": cell.dataset,
            "attack": cell.attack, "defense": cell.defense,
            "victim CACC": victim["cacc"], "victim ASR": victim["asr"],
            "floor ASR": (report.get("clean_floor") or {}).get("asr", np.nan),
            "identified": detection.get("n_flagged", np.nan), "precision": detection.get("precision", np.nan),
            "recall": detection.get("recall", np.nan),
            "inferred target": details.get("inferred_target", np.nan) if detection else np.nan,
            "count decision": (details.get("count") or {}).get("decision", ""),
            "punished classes": ", ".join((details.get("count") or {}).get("targets") or {}),
            "target evidence": _target_evidence(details),
            "kept epoch": details.get("selected_epoch", np.nan),
            "defended CACC": defended["cacc"], "defended ASR": defended["asr"], **_asr_columns(report)})
    return pd.DataFrame(rows)  # in the grid's order: dataset, attack, then DEFENSES' order


def _target_evidence(details: dict) -> str:
    """How strongly the candidates singled out one target (`clear`, `several`, `weak`), where reported."""
    found = details.get("target_evidence") or (details.get("count") or {}).get("target_evidence") or {}
    return found.get("verdict", "")


def condition_tables(*, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per condition of a `condition_rows` frame: its cells with the defense as index, without the columns
    that no cell of that condition fills."""
    tables = {}
    for name, rows in frame.groupby("condition", sort=False):
        table = rows.drop(columns=["condition", "dataset", "attack"]).set_index("defense")
        table = table.replace("", np.nan).dropna(axis=1, how="all")
        tables[name] = table
    return tables


def metric_matrix(*, frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` of a `condition_rows` frame as a condition × defense matrix (NaN where no cell finished)."""
    matrix = frame.pivot_table(index="condition", columns="defense", values=metric, aggfunc="first",
                               sort=False)
    return matrix.reindex(columns=[d for d in DEFENSES if d in matrix.columns])


AT_FLOOR, ABOVE_FLOOR, NO_BACKDOOR = "at the floor", "above the floor", "no backdoor to remove"


def floor_verdicts(*, frame: pd.DataFrame, margin: float | None = None) -> pd.DataFrame:
    """Per defended cell of a `condition_rows` frame: how far its ASR stays above the clean floor (its worst
    backdoor's, for two), the share of the victim's excess over the floor it removed, its CACC change, and a
    verdict with `margin` (default `book.FLOOR_MARGIN`): at the floor, above it (a defense can also raise the
    ASR of a victim that had none), or no backdoor to remove."""
    from .book import FLOOR_MARGIN

    margin = FLOOR_MARGIN if margin is None else margin
    cells = frame[frame["defense"] != "none"].copy()
    parts = [c for c in cells if c.startswith("defended ASR (")]
    worst = cells[parts].max(axis=1) if parts else pd.Series(np.nan, index=cells.index)
    cells["worst ASR"] = worst.fillna(cells["defended ASR"])
    excess = cells["victim ASR"] - cells["floor ASR"]
    cells["above floor (pts)"] = 100 * (cells["worst ASR"] - cells["floor ASR"])
    cells["share removed"] = ((cells["victim ASR"] - cells["worst ASR"]) / excess).where(excess > margin)
    cells["CACC change (pts)"] = 100 * (cells["defended CACC"] - cells["victim CACC"])
    low = cells["worst ASR"] <= cells["floor ASR"] + margin
    cells["verdict"] = np.where(low, np.where(excess <= margin, NO_BACKDOOR, AT_FLOOR), ABOVE_FLOOR)
    cells.loc[cells["floor ASR"].isna(), "verdict"] = "floor not measured"
    return cells[["condition", "defense", "victim ASR", "floor ASR", "worst ASR", "above floor (pts)",
                  "share removed", "CACC change (pts)", "precision", "verdict"]].reset_index(drop=True)


REPAIRS = ("bedkd-adaptive", "bedkd-all-classes", "bedkd-rounds", "bedkd-several")
"""The adaptive preset and the three repairs for several targets, compared side by side by `repair_rows`."""


def repair_rows(*, frame: pd.DataFrame) -> pd.DataFrame:
    """The REPAIRS cells of each condition where `bedkd-several` finished: the rows identified, their
    precision, the classes the several-targets rule punished, and `floor_verdicts`' worst ASR and verdict."""
    conditions = frame.loc[frame["defense"] == "bedkd-several", "condition"].unique()
    cells = frame[frame["condition"].isin(conditions) & frame["defense"].isin(REPAIRS)]
    verdicts = floor_verdicts(frame=cells)
    joined = verdicts.merge(cells[["condition", "defense", "identified", "punished classes"]],
                            on=["condition", "defense"])
    return joined[["condition", "defense", "identified", "precision", "punished classes", "worst ASR",
                   "floor ASR", "verdict"]]


# ---------------------------------------------------------------- stored agreement scores

def scores_frame(*, grid: str) -> pd.DataFrame:
    """The agreement score of every suspect row of each finished BeDKD cell of `grid` with a scores.json,
    one BeDKD cell per condition (both presets share the victim and the DMM, hence the scores)."""
    from . import sweep

    frames, seen = [], set()
    for status in _statuses(grid)[1]:
        cell = status.cell
        name = condition_name(dataset=cell.dataset, attack=cell.attack)
        if status.state != sweep.DONE or cell.defense not in BEDKD or name in seen:
            continue
        scores = cell_scores(cell.dir(store.RESULTS_DIR))
        if scores is None:
            continue
        seen.add(name)
        kind = np.where(scores["is_poisoned"].astype(bool), POISONED, CLEAN)
        frames.append(scores.assign(condition=name, dataset=cell.dataset, attack=cell.attack,
                                    defense=cell.defense, **{"row kind": kind}))
    columns = ["condition", "dataset", "attack", "defense", "row", "score", "is_poisoned", "row kind"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def under_tau(*, scores: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Per condition of a `scores_frame`: poisoned and clean rows, and the share of each with s(x) < tau."""
    rows = []
    for name, group in scores.groupby("condition", sort=False):
        poisoned = group["is_poisoned"].astype(bool).to_numpy()
        low = (group["score"] < tau).to_numpy()
        rows.append({"condition": name, "poisoned rows": int(poisoned.sum()),
                     "poisoned under τ": float(low[poisoned].mean()) if poisoned.any() else np.nan,
                     "clean rows": int((~poisoned).sum()),
                     "clean under τ": float(low[~poisoned].mean()) if (~poisoned).any() else np.nan,
                     "poisoned share of rows under τ": float(poisoned[low].mean()) if low.any() else np.nan})
    return pd.DataFrame(rows)
