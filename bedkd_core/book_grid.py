"""Any sweep grid as the chapters show it: one coverage line, and the cells that ran (over seeds, a mean with a
95% t-interval) as tables and heatmaps.

A cell "ran" when its folder holds a report: with the grid's current settings (`current`), or a full-scale report
made before the defender's clean pool was held out of the victim's training rows (`awaiting a rerun`), or one made
with other settings. Cells that did not run are never a row of a table; the coverage line names them once, grouped
by dataset and attack.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import store

CURRENT, AWAITING, OTHER = "current", "awaiting a rerun", "other settings"
"""The states of a cell that ran (`ran_cells`' column `state`)."""
AWAITING_MARK = "†"
"""Marks a heatmap square of a cell awaiting a rerun."""
AWAITING_WHY = "run before the clean pool was held out"
CONFIDENCE = 0.95


# ---------------------------------------------------------------- where each cell of a grid stands

def grid_statuses(grid: str, *, only: list[str] | None = None) -> tuple[str, list]:
    """The grid's name, and its cells (those matching `only`) with their states; an optional cell only once
    it has finished."""
    from . import sweep

    spec = sweep.load_grid(grid)
    return spec.name, [s for s in sweep.sweep_status(spec, store.RESULTS_DIR, only=only)
                       if not s.cell.optional or s.state in (sweep.DONE, sweep.MISMATCH)]


def ran_state(status) -> str | None:
    """`current`, `awaiting a rerun`, `other settings` for a cell that ran (a CellStatus), else None."""
    from . import sweep

    if status.state == sweep.DONE:
        return CURRENT
    if status.state == sweep.MISMATCH:
        only_pool = status.detail.startswith(f"finished with other settings: {sweep.POOL_DIFF} (rerun")
        return AWAITING if only_pool else OTHER
    return None


def coverage(statuses: list) -> dict[str, int]:
    """How many cells are current, await a rerun, ran with other settings, are running, unsupported or not run
    (no report: never run, failed, interrupted)."""
    from . import sweep

    counts = dict.fromkeys((CURRENT, AWAITING, OTHER, "running", "unsupported", "not run"), 0)
    for s in statuses:
        state = ran_state(s) or {sweep.RUNNING: "running", sweep.UNSUPPORTED: "unsupported"}.get(s.state, "not run")
        counts[state] += 1
    return counts


def _which(seeds: dict[str, tuple[list, list]]) -> str:
    """The cells of one dataset and attack without a report, from defense → (seeds that ran, seeds left): 'all',
    'all but a, b', or the defenses left ('d seed 1' where only some of d's seeds are left)."""
    if not any(ran for ran, _ in seeds.values()):
        return "all"
    done = [d for d, (_, left) in seeds.items() if not left]
    partial = {d: ran for d, (ran, left) in seeds.items() if ran and left}
    left = [d if d not in partial else f"{d} seed {', '.join(map(str, seeds[d][1]))}"
            for d, (_, todo) in seeds.items() if todo]
    return f"all but {', '.join(done)}" if not partial and len(done) < len(left) else ", ".join(left)


def coverage_line(*, grid: str, only: list[str] | None = None, label: str | None = None) -> str:
    """'paper: 0 of 198 cells with the current settings; 24 awaiting a rerun (run before the clean pool was held
    out); not run: sst2/badnets (onion), olid/synbkd (all), agnews (all).'

    Cells without a report are grouped by dataset and attack in the grid's order: a dataset none of whose cells
    ran is named once. `label` names the grid in the line (default: its name).
    """
    from . import sweep

    name, statuses = grid_statuses(grid, only=only)
    counts = coverage(statuses)
    parts = [f"{label or name}: {counts[CURRENT]} of {len(statuses)} cells with the current settings"]
    if counts[AWAITING]:
        parts.append(f"{counts[AWAITING]} awaiting a rerun ({AWAITING_WHY})")
    if counts[OTHER]:
        parts.append(f"{counts[OTHER]} run with other settings (bedkd sweep --status names them)")
    if counts["running"]:
        parts.append(f"{counts['running']} running")
    unsupported = [s.cell.defense for s in statuses if s.state == sweep.UNSUPPORTED]
    if unsupported:
        parts.append(f"{len(unsupported)} unsupported ({', '.join(dict.fromkeys(unsupported))})")
    by_dataset: dict[str, dict[str, dict[str, tuple[list, list]]]] = {}
    for s in statuses:
        if s.state in (sweep.UNSUPPORTED, sweep.RUNNING):
            continue
        seeds = by_dataset.setdefault(s.cell.dataset, {}).setdefault(s.cell.attack, {})
        seeds.setdefault(s.cell.defense, ([], []))[ran_state(s) is None].append(s.cell.seed)
    missing = []
    for dataset, conditions in by_dataset.items():
        if len(conditions) > 1 and all(_which(seeds) == "all" for seeds in conditions.values()):
            missing.append(f"{dataset} (all)")
            continue
        missing += [f"{dataset}/{attack} ({_which(seeds)})" for attack, seeds in conditions.items()
                    if any(left for _, left in seeds.values())]
    if missing:
        parts.append(f"not run: {', '.join(missing)}")
    return "; ".join(parts) + "."


# ---------------------------------------------------------------- the cells that ran

RAN_COLUMNS = ["grid", "dataset", "attack", "defense", "seed", "status", "state", "victim_cacc", "victim_asr",
               "floor_asr", "defended_cacc", "defended_asr", "cacc_drop", "asr_reduction", "precision", "recall",
               "frr", "far", "defense_seconds", "victim_seconds", "device", "commit", "date", "scale",
               "pool_held_out"]


def ran_cells(*grids: str, only: list[str] | None = None) -> pd.DataFrame:
    """One row per cell of `grids` that ran (a report, current or not; a cell in two grids once, from the first),
    in the grids' order, with its `state`, metrics (the `none` cell's defended model is its victim), CACC drop
    (victim - defended), the clean floor (the cell's own, else another grid's report of a victim with the same
    data, seed and device) and the device, short.

    The frame also has `book.results_frame`'s columns `status` ("done": a report exists) and provenance, so
    `book.provenance_note` and `book.load_curves` read it.
    """
    from .book import results_frame, short_device

    frames = []
    for grid in grids:
        name, statuses = grid_statuses(grid, only=only)
        states = {(s.cell.dataset, s.cell.attack, s.cell.defense, s.cell.seed): ran_state(s) for s in statuses}
        frame = results_frame(name)
        if frame.empty:
            continue
        keys = list(zip(frame["dataset"], frame["attack"], frame["defense"], frame["seed"]))
        order = {key: i for i, key in enumerate(states)}
        frame = frame.assign(grid=name, status="done", state=[states.get(k) for k in keys],
                             order=[(len(frames), order.get(k, -1)) for k in keys])
        frames.append(frame[frame["state"].notna()])
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if cells.empty:
        return pd.DataFrame(columns=RAN_COLUMNS)
    cells = (cells.sort_values("order", kind="stable")  # in the grids' order; a cell in two grids from the first
             .drop_duplicates(subset=["dataset", "attack", "defense", "seed"]).reset_index(drop=True))
    undefended = cells["defense"] == "none"
    for metric in ("cacc", "asr"):
        cells[f"defended_{metric}"] = cells[f"defended_{metric}"].astype(float).where(
            ~undefended, cells[f"victim_{metric}"])
    cells["cacc_drop"] = cells["victim_cacc"].astype(float) - cells["defended_cacc"].astype(float)
    cells["asr_reduction"] = 1 - cells["defended_asr"].astype(float) / cells["victim_asr"].astype(float)
    cells["device"] = cells["device"].fillna("unknown device").map(short_device)
    floors = _floors(datasets=set(cells["dataset"]), attacks=set(cells["attack"]))
    cells["floor_asr"] = [f if pd.notna(f) else floors.get(key, np.nan) for f, key in zip(
        cells["floor_asr"], zip(cells["dataset"], cells["attack"], cells["seed"], cells["device"]))]
    return cells.reindex(columns=RAN_COLUMNS)


def _floors(*, datasets: set, attacks: set) -> dict:
    """The clean floor of every full-scale victim with its attack's default settings that any grid's report
    measured, by (dataset, attack, seed, short device): a victim trained on another device is another model."""
    from .attacks import AttackConfig
    from .book import short_device

    found = {}
    for grid in store.grids():
        for r in store.load_reports(grid):
            dataset, attack = r["cell"]["dataset"], (r.get("attack") or {}).get("name")
            floor = (r.get("clean_floor") or {}).get("asr")
            if (floor is None or r.get("scale") != "full" or dataset not in datasets or attack not in attacks
                    or r["attack"] != AttackConfig(name=attack).resolved(dataset).asdict()):
                continue
            device = short_device((r.get("provenance") or {}).get("device") or "unknown device")
            found.setdefault((dataset, attack, r.get("seed"), device), floor)
    return found


def seed_interval(values, *, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided t-interval over seeds, number of seeds) of `values`, NaN ignored;
    the half-width is NaN for a single seed (no spread to measure), the mean NaN for none."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, 0
    if len(x) == 1:
        return float(x[0]), math.nan, 1
    half = stats.t.ppf(0.5 + confidence / 2, df=len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half), len(x)


def interval_text(mean: float, half: float, *, digits: int = 3) -> str:
    """'0.123 ± 0.045', '0.123' for one seed (no interval), '—' for no value."""
    if pd.isna(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if pd.isna(half) else f" ± {half:.{digits}f}")


SUMMARY_METRICS = ("victim_cacc", "victim_asr", "floor_asr", "defended_asr", "defended_cacc", "cacc_drop",
                   "precision", "recall", "defense_seconds")


def cell_summary(cells: pd.DataFrame, *, metrics=SUMMARY_METRICS, digits: int | dict = 3) -> pd.DataFrame:
    """One row per (grid, dataset, attack, defense) of a `ran_cells` frame: seeds, state (`awaiting a rerun`
    if any seed awaits one), devices, and per metric its mean, its interval's half-width (`<metric>_pm`) and
    the two as text (`<metric>_text`: the single value for one seed) with `digits` decimals (a dict: per
    metric, 3 for the others)."""
    places, default = (digits, 3) if isinstance(digits, dict) else ({}, digits)
    columns = ["grid", "dataset", "attack", "defense", "seeds", "state", "device"] + [
        f"{m}{suffix}" for m in metrics for suffix in ("", "_pm", "_text")]
    rows = []
    for key, group in cells.groupby(["grid", "dataset", "attack", "defense"], sort=False):
        states = set(group["state"])
        row = dict(zip(["grid", "dataset", "attack", "defense"], key), seeds=len(group),
                   state=next(s for s in (AWAITING, OTHER, CURRENT) if s in states),
                   device="; ".join(dict.fromkeys(group["device"])))
        for metric in metrics:
            mean, half, _ = seed_interval(group[metric])
            row.update({metric: mean, f"{metric}_pm": half,
                        f"{metric}_text": interval_text(mean, half, digits=places.get(metric, default))})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def summary_table(summary: pd.DataFrame, *, columns: dict[str, str]) -> pd.DataFrame:
    """A `cell_summary` as a table to show: the grid and cell, `columns` (metric → heading, each shown as
    mean ± interval) and its seeds, device and state."""
    table = summary[["grid", "dataset", "attack", "defense"]].copy()
    for metric, heading in columns.items():
        table[heading] = summary[f"{metric}_text"]
    table["seeds"], table["device"], table["state"] = summary["seeds"], summary["device"], summary["state"]
    return table.reset_index(drop=True)


FLOOR_COLUMN = "clean floor"


def heatmap_frame(summary: pd.DataFrame, *, metric: str, defenses: list[str] | None = None,
                  floor: bool = False, digits: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A `cell_summary`'s `metric` as a (dataset · attack) × defense matrix over the cells that ran (rows and
    columns in order of appearance, `defenses` to choose and order the columns), and its labels: the value
    (± interval over seeds), the device, and AWAITING_MARK for a cell awaiting a rerun. With `floor`, a last
    column holds each row's clean-floor ASR."""
    summary = summary.assign(row=[f"{d} · {a}" for d, a in zip(summary["dataset"], summary["attack"])])
    if defenses is not None:
        summary = summary[summary["defense"].isin(defenses)]
    rows = list(dict.fromkeys(summary["row"]))
    columns = [d for d in (defenses or dict.fromkeys(summary["defense"])) if d in set(summary["defense"])]
    values = pd.DataFrame(np.nan, index=rows, columns=columns + ([FLOOR_COLUMN] if floor else []))
    labels = pd.DataFrame("", index=values.index, columns=values.columns)
    for _, r in summary.iterrows():
        values.loc[r["row"], r["defense"]] = r[metric]
        mark = AWAITING_MARK if r["state"] == AWAITING else ""
        text = interval_text(r[metric], r[f"{metric}_pm"], digits=digits)
        labels.loc[r["row"], r["defense"]] = f"{text}{mark}\n{_tag(r['device'])}"
    if floor:
        for row, group in summary.groupby("row", sort=False):
            values.loc[row, FLOOR_COLUMN], labels.loc[row, FLOOR_COLUMN] = _floor(group, digits=digits)
    values.index.name, values.columns.name = "dataset · attack", "defense"
    return values.astype(float), labels


def _tag(device: str) -> str:
    """A device as a heatmap square names it: 'CPU 2 cores', 'H200' (a GPU without its maker's name)."""
    return device.replace("NVIDIA ", "")


def _floor(group: pd.DataFrame, *, digits: int) -> tuple[float, str]:
    """The clean floor of one (dataset, attack) of a `cell_summary`: the victim differs per device, so one
    floor per device (its cells share it), named by device when there are several."""
    per_device = group.dropna(subset=["floor_asr"]).drop_duplicates("device")
    if per_device.empty:
        return math.nan, "—"
    texts = [interval_text(r["floor_asr"], r["floor_asr_pm"], digits=digits) for _, r in per_device.iterrows()]
    if len(per_device) > 1:
        texts = [f"{text} {_tag(device)}" for text, device in zip(texts, per_device["device"])]
    return float(per_device["floor_asr"].mean()), "\n".join(texts)


def draw_heatmap(*, ax, values: pd.DataFrame, labels: pd.DataFrame, title: str, cmap: str = "Reds",
                 vmin: float = 0.0, vmax: float = 1.0, center: float | None = None) -> None:
    """A seaborn heatmap of `heatmap_frame`'s matrix on `ax`, each square labelled; squares without a cell that
    ran stay grey."""
    import matplotlib as mpl
    import seaborn as sns

    sns.heatmap(values, vmin=vmin, vmax=vmax, center=center, cmap=cmap, linewidths=0.5, linecolor="white",
                cbar_kws={"shrink": 0.6}, ax=ax)
    ax.set_facecolor("#eeeeee")
    colours = mpl.colormaps[cmap]
    norm = (mpl.colors.Normalize(vmin, vmax) if center is None
            else mpl.colors.TwoSlopeNorm(center, vmin=vmin, vmax=vmax))
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            value = values.iat[i, j]
            red, green, blue, _ = colours(norm(np.clip(value, vmin, vmax))) if not np.isnan(value) else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # the square's luminance
            ax.text(j + 0.5, i + 0.5, labels.iat[i, j], ha="center", va="center", fontsize=6.5,
                    color="white" if dark else "black")
    ax.set_title(title)
    ax.set_xlabel(values.columns.name or "")
    ax.set_ylabel(values.index.name or "")
    ax.tick_params(axis="y", rotation=0)


def legend(summary: pd.DataFrame) -> str:
    """What a `heatmap_frame` label or `summary_table` value says: the seeds behind it, and AWAITING_MARK when
    a cell of `summary` carries it."""
    seeds = int(summary["seeds"].max()) if not summary.empty else 0
    line = ("Values: the mean over seeds ± the half-width of its 95% t-interval" if seeds > 1
            else "Values: one seed per cell, so a single value and no interval")
    line += "; each cell names the device that ran it."
    if not summary.empty and (summary["state"] == AWAITING).any():
        line += f" {AWAITING_MARK} or '{AWAITING}': {AWAITING_WHY}."
    return line


def headline_by_dataset(cells: pd.DataFrame) -> pd.DataFrame:
    """Per defense and dataset over `book.finished_cells`: cells, seeds, the mean ASR reduction (%) and CACC
    drop (points) with their 95% t-interval over seeds, and how many cells reach the floor + 5 points.

    A seed's value is its mean over the attacks that every seed of the group ran, so that the interval
    compares like with like; `attacks` names them (a `*` marks attacks only some seeds ran)."""
    rows = []
    for (defense, dataset), group in cells.groupby(["defense", "dataset"], sort=False):
        by_seed = group.groupby("seed")["attack"].agg(set)
        shared = set.intersection(*by_seed)
        common = group[group["attack"].isin(shared)].groupby("seed")
        reduction = seed_interval(common["asr_reduction"].mean() * 100)
        drop = seed_interval(common["cacc_drop"].mean() * 100)
        attacks = sorted(set(group["attack"]))
        rows.append({"defense": defense, "dataset": dataset, "cells": len(group), "seeds": len(by_seed),
                     "ASR reduction (%)": interval_text(reduction[0], reduction[1], digits=1),
                     "CACC drop (pts)": interval_text(drop[0], drop[1], digits=1),
                     "ASR ≤ floor + 5 pts": f"{int(group['within_floor'].sum())} of "
                                            f"{int(group['within_floor'].count())}",
                     "attacks": ", ".join(a if a in shared else f"{a}*" for a in attacks)})
    return pd.DataFrame(rows)
