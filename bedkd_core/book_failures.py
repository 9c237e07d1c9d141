"""Chapter 6's "where BeDKD fails", from the measured worst cells: each BeDKD cell whose ASR stayed above its
clean floor + 5 points, ranked by how far above, with the reason its own numbers point to.

The reasons are checked in a fixed order, each from the cell's report and curve: no backdoor to remove, nothing
punished, one of two backdoors left, identification that punished clean rows, an epoch rule that kept a worse
epoch than the curve passed through, and otherwise a punish set that was poison yet did not carry over.
The ablation grids are left out: they break BeDKD on purpose. `lookalikes` then looks inside the cells that
failed at identification: where their poisoned rows rank among the target class's rows by agreement score.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .attacks import AttackConfig
from .book import FLOOR_MARGIN, pool_held_out
from .book_beyond import poisoned_train
from .book_data import cell_curve, cell_scores
from .data import DataError

EXCLUDED_PREFIX = "ablation-"


def _worst_asr(defended: dict) -> tuple[float, str | None]:
    """The defended ASR, or the worst backdoor's where there are several (with its name)."""
    by_backdoor = defended.get("asr_by_backdoor") or {}
    if by_backdoor:
        name = max(by_backdoor, key=by_backdoor.get)
        return by_backdoor[name], name
    return defended["asr"], None


def diagnose(report: dict, *, curve: tuple | None = None) -> str:
    """Why a BeDKD cell stayed above its floor + 5 points, from its own numbers (see the module doc)."""
    floor, victim = report["clean_floor"]["asr"], report["victim"]["asr"]
    defended, detection = report["defended"], report.get("detection") or {}
    details = report.get("defense_details") or {}
    line = floor + FLOOR_MARGIN
    if victim <= line:
        return (f"no backdoor to remove: the victim's ASR {victim:.2f} is within 5 points of the floor "
                f"{floor:.2f}; the defense itself raised the ASR")
    punished = detection.get("n_flagged") or 0
    if not punished:
        return "nothing punished: the evidence supported no row, so AKD ran trust-only distillation"
    by_backdoor = defended.get("asr_by_backdoor") or {}
    left = {name: asr for name, asr in by_backdoor.items() if asr > line}
    if by_backdoor and len(left) < len(by_backdoor):
        gone = ", ".join(f"{name} {asr:.2f}" for name, asr in by_backdoor.items() if name not in left)
        target = details.get("inferred_target")
        source = ("the inferred target " + str(target)) if target is not None else "every class ranked together"
        return f"one backdoor left: {', '.join(f'{n} ASR {a:.2f}' for n, a in left.items())} while {gone}; " \
               f"the punish set came from {source}"
    precision = detection.get("precision") or 0.0
    if precision < 0.5:
        return (f"identification: {round(precision * punished)} of {punished} punished rows were poisoned, "
                "so AKD pushed mostly clean rows away from the target")
    kept = details.get("selected_epoch")
    if curve is not None and kept is not None:
        points = curve[0]["asr"]
        best = points.idxmin()
        if points.min() <= line and points.get(kept, float("inf")) > line:
            return (f"epoch rule: the test curve reached ASR {points.min():.2f} at epoch {best}, the rule kept "
                    f"epoch {kept} (ASR {points.get(kept):.2f}) by the dev accuracy")
    return (f"most punished rows were poisoned (precision {precision:.2f}), yet the ASR stayed: punishing "
            f"{punished} rows did not carry over to the trigger")


def _failing_cells():
    """(grid, report, worst ASR, its backdoor) of every BeDKD cell outside the ablations above its floor + 5
    points, and the count of BeDKD cells with a measured floor."""
    failing, judged = [], 0
    for grid in store.grids():
        if grid.startswith(EXCLUDED_PREFIX):
            continue
        for report in store.load_reports(grid):
            if (report.get("defense") or {}).get("name") != "bedkd" or not report.get("defended") \
                    or not report.get("clean_floor"):
                continue
            judged += 1
            asr, backdoor = _worst_asr(report["defended"])
            if asr - report["clean_floor"]["asr"] > FLOOR_MARGIN:
                failing.append((grid, report, asr, backdoor))
    return failing, judged


def _name(grid: str, report: dict) -> str:
    cell = report["cell"]
    return f"{grid}: {cell['dataset']}/{cell['attack']}/{cell['defense']}"


def floor_failures() -> pd.DataFrame:
    """Every BeDKD cell (any grid but the ablations, any scale) above its floor + 5 points, the furthest first,
    with the reason (`why`); `attrs["judged"]` counts the BeDKD cells with a measured floor."""
    failing, judged = _failing_cells()
    rows = [{"cell": _name(grid, report), "scale": report.get("scale"), "victim ASR": report["victim"]["asr"],
             "floor ASR": report["clean_floor"]["asr"],
             "defended ASR": asr if backdoor is None else f"{asr:.3f} ({backdoor})",
             "above floor": asr - report["clean_floor"]["asr"],
             "precision": (report.get("detection") or {}).get("precision"), "pool held out": pool_held_out(report),
             "why": diagnose(report, curve=cell_curve(Path(report["cell"]["dir"])))}
            for grid, report, asr, backdoor in failing]
    frame = pd.DataFrame(rows)
    if rows:
        frame = frame.sort_values("above floor", ascending=False).reset_index(drop=True)
    frame.attrs["judged"] = judged
    return frame


def lookalikes(report: dict) -> dict | None:
    """Where a cell's poisoned rows rank among the rows of the attack's target class by agreement score (low:
    the DMM still agrees with the teacher), or None without scores or a single target. Like the oracle flags,
    the target is known after the fact only; the defense never sees it.

    `clean first` counts the clean target rows scoring below every poisoned row: rows whose label the DMM's
    flipped distillation could not overturn either, so any ranking by agreement meets them first. The given
    labels are rebuilt from the data (the report's dataset, attack, scale and seed; no model is trained) and
    checked against the oracle flags that scores.json stored."""
    folder = Path(report["cell"]["dir"])
    scores, details = cell_scores(folder), report.get("defense_details") or {}
    target = report["attack"].get("target_label")
    if scores is None or target is None or report["attack"].get("label_mode", "dirty") != "dirty":
        return None
    _, poisoned = poisoned_train(dataset=report["dataset"], attack=AttackConfig(**report["attack"]),
                                 scale=report["scale"], seed=report["seed"])
    rows = scores["row"].to_numpy()
    flags = np.asarray(poisoned.is_poisoned, dtype=bool)
    if len(flags) != len(rows) or not np.array_equal(flags[rows], scores["is_poisoned"].to_numpy(dtype=bool)):
        raise DataError(f"{folder / 'scores.json'}: the rebuilt poisoned rows do not match its oracle flags; the "
                        "data or the attack changed since the run: rerun the cell")
    mine = np.asarray(poisoned.data["label"])[rows] == target
    ranked = flags[rows][mine][np.argsort(scores["score"].to_numpy()[mine], kind="stable")]
    asked = int((report.get("detection") or {}).get("n_flagged", 0) + details.get("n_watched", 0))
    return {"target": int(target), "target rows": int(mine.sum()), "poisoned rows": int(ranked.sum()),
            "clean first": int(np.argmax(ranked)) if ranked.any() else int(mine.sum()),
            "identified": asked, "poisoned among the lowest identified": float(ranked[:asked].mean()),
            "poisoned among the lowest 4 × identified": float(ranked[: 4 * asked].mean())}


def identification_lookalikes() -> pd.DataFrame:
    """`lookalikes` of every failing cell that `diagnose` blames on identification, the furthest above its
    floor first."""
    failing, _ = _failing_cells()
    rows = []
    for grid, report, asr, _ in sorted(failing, key=lambda f: f[2] - f[1]["clean_floor"]["asr"], reverse=True):
        if diagnose(report).startswith("identification"):
            found = lookalikes(report)
            if found is not None:
                rows.append({"cell": _name(grid, report), "scale": report.get("scale"), **found})
    return pd.DataFrame(rows)
