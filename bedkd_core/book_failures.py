"""Chapter 6's "where BeDKD fails", from the measured worst cells: each BeDKD cell whose ASR stayed above its
clean floor + 5 points, ranked by how far above, with the reason its own numbers point to.

The reasons are checked in a fixed order, each from the cell's report and curve: no backdoor to remove, nothing
punished, one of two backdoors left, identification that punished clean rows, an epoch rule that kept a worse
epoch than the curve passed through, and otherwise a punish set that was poison yet did not carry over.
The ablation grids are left out: they break BeDKD on purpose.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import store
from .book import FLOOR_MARGIN, pool_held_out
from .book_data import cell_curve

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


def floor_failures() -> pd.DataFrame:
    """Every BeDKD cell (any grid but the ablations, any scale) above its floor + 5 points, the furthest first,
    with the reason (`why`); `attrs["judged"]` counts the BeDKD cells with a measured floor."""
    rows, judged = [], 0
    for grid in store.grids():
        if grid.startswith(EXCLUDED_PREFIX):
            continue
        for report in store.load_reports(grid):
            if (report.get("defense") or {}).get("name") != "bedkd" or not report.get("defended") \
                    or not report.get("clean_floor"):
                continue
            judged += 1
            asr, backdoor = _worst_asr(report["defended"])
            excess = asr - report["clean_floor"]["asr"]
            if excess <= FLOOR_MARGIN:
                continue
            cell = report["cell"]
            rows.append({"cell": f"{grid}: {cell['dataset']}/{cell['attack']}/{cell['defense']}",
                         "scale": report.get("scale"), "victim ASR": report["victim"]["asr"],
                         "floor ASR": report["clean_floor"]["asr"],
                         "defended ASR": asr if backdoor is None else f"{asr:.3f} ({backdoor})",
                         "above floor": excess, "precision": (report.get("detection") or {}).get("precision"),
                         "pool held out": pool_held_out(report),
                         "why": diagnose(report, curve=cell_curve(Path(cell["dir"])))})
    frame = pd.DataFrame(rows)
    if rows:
        frame = frame.sort_values("above floor", ascending=False).reset_index(drop=True)
    frame.attrs["judged"] = judged
    return frame
