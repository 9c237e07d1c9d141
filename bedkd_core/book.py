"""Helpers the chapters share: the data check, results files and their provenance line.

Results live in `results/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json` (the `bedkd run` schema),
written by real runs; chapters render tables from them and say "not yet run" for cells that have no file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .data import DataError, data_root

RESULTS_DIR = Path(os.environ.get("BEDKD_RESULTS", Path(__file__).resolve().parent.parent / "results"))
NOT_RUN = "not yet run"


def check_setup() -> Path:
    """Fail a chapter early with one readable line when the data is missing, instead of a long traceback."""
    try:
        return data_root()
    except DataError as err:
        raise SystemExit(f"{err}") from None


def cell_dir(*, grid: str, dataset: str, attack: str, defense: str, seed: int = 0) -> Path:
    return RESULTS_DIR / grid / dataset / attack / defense / f"seed{seed}"


def load_reports(grid: str) -> list[dict]:
    """Every report of a grid, each with its cell coordinates added under `cell`."""
    reports = []
    for path in sorted((RESULTS_DIR / grid).glob("*/*/*/seed*/report.json")):
        dataset, attack, defense, seed = path.parent.relative_to(RESULTS_DIR / grid).parts
        report = json.loads(path.read_text())
        report["cell"] = {"dataset": dataset, "attack": attack, "defense": defense, "seed": int(seed[4:]),
                          "dir": str(path.parent)}
        reports.append(report)
    return reports


def results_frame(grid: str, *, expected: list[tuple[str, str, str]] | None = None) -> pd.DataFrame:
    """One row per cell (dataset, attack, defense, seed): metrics as fractions, timings and provenance.

    Cells listed in `expected` (dataset, attack, defense) without a results file appear with status "not yet run".
    """
    rows = []
    for r in load_reports(grid):
        defended = r.get("defended") or {}
        detection = r.get("detection") or {}
        prov = r.get("provenance", {})
        rows.append({
            **{k: r["cell"][k] for k in ("dataset", "attack", "defense", "seed")},
            "status": "done",
            "victim_cacc": r["victim"]["cacc"], "victim_asr": r["victim"]["asr"],
            "floor_asr": (r.get("clean_floor") or {}).get("asr"),
            "defended_cacc": defended.get("cacc"), "defended_asr": defended.get("asr"),
            "precision": detection.get("precision"), "recall": detection.get("recall"),
            "defense_seconds": r["seconds"].get("defense"), "victim_seconds": r["seconds"].get("victim"),
            "device": prov.get("device"), "commit": prov.get("git_commit"), "date": prov.get("date"),
            "scale": r.get("scale"),
        })
    frame = pd.DataFrame(rows)
    done = {(r["dataset"], r["attack"], r["defense"]) for r in rows}
    missing = [{"dataset": d, "attack": a, "defense": f, "seed": 0, "status": NOT_RUN}
               for d, a, f in (expected or []) if (d, a, f) not in done]
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
    return frame


def victims_frame(*, scale: str, datasets: list[str], attacks: list[str], seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, attack): the victim's CACC/ASR (and clean floor) at `scale` with default settings.

    A victim does not depend on the defense run on it, so any grid's report of that cell serves, as long as its
    attack settings are the attack's defaults; a report that also measured the floor is preferred.
    Pairs with no such report have status "not yet run".
    """
    from .attacks import AttackConfig

    found = {}
    for grid in sorted(p.name for p in RESULTS_DIR.iterdir() if p.is_dir()) if RESULTS_DIR.is_dir() else []:
        for r in load_reports(grid):
            dataset, attack = r["cell"]["dataset"], (r.get("attack") or {}).get("name")
            if (r.get("scale") != scale or r.get("seed") != seed or dataset not in datasets or attack not in attacks
                    or r["attack"] != AttackConfig(name=attack).resolved(dataset).asdict()):
                continue
            if (dataset, attack) not in found or (r.get("clean_floor") and not found[dataset, attack].get("clean_floor")):
                found[dataset, attack] = {**r, "grid": grid}
    rows = []
    for dataset in datasets:
        for attack in attacks:
            r = found.get((dataset, attack))
            if r is None:
                rows.append({"dataset": dataset, "attack": attack, "status": NOT_RUN})
                continue
            prov = r.get("provenance", {})
            rows.append({"dataset": dataset, "attack": attack, "status": "done", "victim_cacc": r["victim"]["cacc"],
                         "victim_asr": r["victim"]["asr"], "floor_asr": (r.get("clean_floor") or {}).get("asr"),
                         "victim_seconds": r["seconds"].get("victim"), "grid": r["grid"], "device": prov.get("device"),
                         "commit": prov.get("git_commit"), "date": prov.get("date"), "scale": r.get("scale")})
    return pd.DataFrame(rows)


def provenance_note(frame: pd.DataFrame) -> str:
    """One line saying which commits, devices and dates produced the finished rows of a results frame."""
    done = frame[frame["status"] == "done"] if "status" in frame else frame
    if done.empty:
        return "Not yet run: no results file exists for these cells yet."
    parts = [
        f"commit {', '.join(sorted(set(c[:12] for c in done['commit'].dropna())))}",
        f"device {'; '.join(sorted(set(done['device'].dropna())))}",
        f"dates {min(done['date'])[:10]} to {max(done['date'])[:10]}",
        f"scale {', '.join(sorted(set(done['scale'].dropna())))}",
    ]
    return "Results from real runs: " + " · ".join(parts) + "."
