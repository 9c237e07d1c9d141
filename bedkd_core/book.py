"""Helpers the chapters share: the data check, results files and their provenance line.

Results live in `results/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json` (the `bedkd run` schema),
written by real runs; chapters render tables from them and say "not yet run" for cells that have no file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import book_grid, store
from .book_data import (api_summary, bedkd_runs, cell_curve, cell_report, cell_scores,  # noqa: F401
                        clean_model, cls_states, compare_tables, epoch_rule, final_punish_losses, head,
                        load_curves, paraphrase_aligned, pca_2d, poison, punish_terms, run_name,
                        side_by_side, stealth, victim_subset, words)
from .data import DataError, data_root
from .store import load_reports

NOT_RUN = "not yet run"


def check_setup() -> None:
    """Fail a chapter early with one readable line when the data is missing, instead of a long traceback.

    Returns nothing, so a chapter that ends a cell with it shows no local path.
    """
    try:
        data_root()
    except DataError as err:
        raise SystemExit(f"{err}") from None


PAGES_CLASS = "bedkd-pages"
PAGES_STYLE = (f"<style>.{PAGES_CLASS} > .p-TabBar, .{PAGES_CLASS} > .lm-TabBar {{display: none !important;}} "
               f".{PAGES_CLASS} > .widget-tab-contents {{border: none !important; padding: 0 !important;}}</style>")
"""Hides the tab bar of `choice_view`'s pages (ipywidgets 7 draws it with phosphor classes, 8 with lumino's)."""


def choice_view(control, pages: list[str]):
    """`control` (a Dropdown, SelectionSlider: a widget with options and an `index`) showing one of `pages` (HTML).

    Every page is computed beforehand, so the view works without a kernel (a JS link, saved with the page) and with
    one (a Python link as well: Colab's front end may ignore JS links), on ipywidgets 7.7 (Colab's) and 8. The pages
    sit in a Tab whose tab bar is hidden (titled with the control's labels, should a front end show it anyway):
    `Stack`, made for this, is ipywidgets 8 only.
    """
    import ipywidgets as widgets

    labels = list(control._options_labels)
    if len(labels) != len(pages):
        raise ValueError(f"{len(labels)} options but {len(pages)} pages")
    tab = widgets.Tab(children=[widgets.HTML(PAGES_STYLE + page) for page in pages], selected_index=control.index)
    for i, label in enumerate(labels):
        tab.set_title(i, label)
    tab.add_class(PAGES_CLASS)
    widgets.jslink((control, "index"), (tab, "selected_index"))
    widgets.link((control, "index"), (tab, "selected_index"))
    return widgets.VBox([control, tab])


def pool_held_out(report: dict) -> bool:
    """Whether the defender's clean pool was disjoint from the victim's training rows (always, but at full scale
    before the pool was held out: such reports lack `sizes.clean_pool_overlap` and await a rerun)."""
    return "clean_pool_overlap" in (report.get("sizes") or {}) or report.get("scale") != "full"


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
            "frr": defended.get("frr"), "far": defended.get("far"),
            "precision": detection.get("precision"), "recall": detection.get("recall"),
            "defense_seconds": r["seconds"].get("defense"), "victim_seconds": r["seconds"].get("victim"),
            "device": prov.get("device"), "commit": prov.get("git_commit"), "date": prov.get("date"),
            "scale": r.get("scale"), "pool_held_out": pool_held_out(r),
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
    for grid in store.grids():
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
                         "commit": prov.get("git_commit"), "date": prov.get("date"), "scale": r.get("scale"),
                         "pool_held_out": pool_held_out(r)})
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
    note = "Results from real runs: " + " · ".join(parts) + "."
    if "pool_held_out" in done and not done["pool_held_out"].fillna(True).all():
        stale = int((~done["pool_held_out"].fillna(True).astype(bool)).sum())
        note += (f" {stale} of these {len(done)} cells were run before the defender's clean pool was held out of "
                 "the victim's training rows: their pool holds sentences the victim learned (some the clean twins "
                 "of poisoned rows), which favours BeDKD's identification; they await a rerun.")
    return note


GRID_VIEW_COLUMNS = ["grid", "dataset", "attack", "defense", "options", "status", "precision", "recall",
                     "defended_cacc", "defended_asr", "victim_cacc", "victim_asr", "device", "seed",
                     "detail"]
METRIC_COLUMNS = ("precision", "recall", "defended_cacc", "defended_asr", "victim_cacc", "victim_asr")


def grid_view(*, name: str, only: list[str] | None = None) -> pd.DataFrame:
    """Every cell of sweep grid `name` (those matching `only`) with its state; metrics for finished ones.

    Optional cells are listed once they have run; `detail` says what an unsupported cell needs. A cell finished
    with other settings (`mismatch`) keeps its metrics, and its status says so.
    """
    from . import sweep

    grid = sweep.load_grid(name)
    finished = results_frame(name)
    metrics = ({(r["dataset"], r["attack"], r["defense"]): r for _, r in finished.iterrows()}
               if "status" in finished else {})
    rows = []
    for status in sweep.sweep_status(grid, store.RESULTS_DIR, only=only):
        cell = status.cell
        if cell.optional and status.state != sweep.DONE:
            continue
        options = {k: v for k, v in cell.defense_options.items() if k != "curve_every"}
        row = {"grid": name, "dataset": cell.dataset, "attack": cell.attack, "defense": cell.defense,
               "options": ", ".join(f"{k}={v}" for k, v in options.items()) or "(preset defaults)",
               "status": status.state,
               "detail": status.detail if status.state == sweep.UNSUPPORTED else ""}
        found = metrics.get((cell.dataset, cell.attack, cell.defense))
        if status.state in (sweep.DONE, sweep.MISMATCH) and found is not None:  # mismatch: see provenance_note
            row.update({k: found[k] for k in METRIC_COLUMNS}, seed=found["seed"],
                       device=short_device(found["device"]))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=GRID_VIEW_COLUMNS)


def unsupported_lines(*, view: pd.DataFrame) -> list[str]:
    """One line per unsupported cell of a `grid_view`: the defense and what it needs."""
    from . import sweep

    rows = view[view["status"] == sweep.UNSUPPORTED]
    return [f"unsupported {r['defense']}: {r['detail']}" for _, r in rows.iterrows()]


def select_cells(*, frame: pd.DataFrame, cells: list[tuple[str, str, str]]) -> pd.DataFrame:
    """The rows of a results frame whose (dataset, attack, defense) is in `cells`, in their order."""
    keys = [tuple(r) for r in frame[["dataset", "attack", "defense"]].itertuples(index=False)]
    order = {cell: i for i, cell in enumerate(cells)}
    picked = frame[[key in order for key in keys]]
    ranks = [order[key] for key in keys if key in order]
    return picked.iloc[np.argsort(ranks, kind="stable")]


def metric_text(*, row, column: str) -> str:
    """A finished row's `column` with three decimals, or the row's status (e.g. "not yet run")."""
    return row["status"] if row["status"] != "done" else f"{row[column]:.3f}"


def rerun_victims(*, frame: pd.DataFrame, scale: str) -> list[str]:
    """Train and measure the victims of `frame` that have no report (grid "full", defense none).

    Only at full scale; a line per cell run, or one line saying what was skipped.
    """
    from .attacks import AttackConfig
    from .experiments import run_experiment

    missing = frame[frame["status"] != "done"]
    if scale != "full":
        return [f"BEDKD_SCALE={scale}: skipped; {len(missing)} cell(s) would run at full scale"]
    lines = []
    for dataset, attack in missing[["dataset", "attack"]].itertuples(index=False):
        out = store.cell_dir(grid="full", dataset=dataset, attack=attack, defense="none")
        report = run_experiment(dataset=dataset, attack=AttackConfig(name=attack), defense="none",
                                scale="full", seed=0, out=out)
        lines.append(f"{dataset}/{attack}: victim {report['victim']}, floor {report['clean_floor']}")
    return lines


def detection_at_tau(*, tau: float, scores: dict, labels, reference: dict, config,
                     num_classes: int, is_poisoned) -> tuple[pd.DataFrame, dict]:
    """Precision and recall of every row under `tau` and of the rows identified at `tau`, and the
    identification's details (for the reader: `is_poisoned` are the oracle flags)."""
    import dataclasses

    from .defenses.bedkd import identify_poisoned
    from .metrics import detection_scores

    at_tau = dataclasses.replace(config, tau=tau)
    kept, details = identify_poisoned(scores=scores, labels=labels, config=at_tau,
                                      n_rows=at_tau.n_poison, reference=reference,
                                      num_classes=num_classes)
    under = np.flatnonzero(np.asarray(scores["score"]) < tau)
    table = pd.DataFrame([
        {"selection": "every row under τ", **detection_scores(under, is_poisoned)},
        {"selection": f"identified (k={at_tau.n_poison})", **detection_scores(kept, is_poisoned)},
    ])
    return table, details


def epoch_pages(*, curve: pd.DataFrame, history: pd.DataFrame, start: dict) -> list[str]:
    """One HTML line per epoch of an AKD curve (epoch 0 = the victim `start`): CACC, ASR, losses."""
    pages = []
    for _, point in curve.iterrows():
        losses = history[history["epoch"] == point["epoch"]]
        if losses.empty:
            loss_text = "victim: no training yet"
        else:
            trust, punish = losses.iloc[0][["trust_loss", "punish_loss"]]
            loss_text = (f"trust loss {trust:.4f}, punish loss "
                         + ("n/a" if pd.isna(punish) else f"{punish:.4f}"))
        pages.append(f"<p><b>epoch {int(point['epoch'])}</b>: CACC <b>{point['cacc']:.3f}</b> "
                     f"(victim {start['cacc']:.3f}), ASR <b>{point['asr']:.3f}</b> "
                     f"(victim {start['asr']:.3f})<br>{loss_text}</p>")
    return pages


def live_row(*, name: str, metrics: dict, seconds: float | None, source: str, victim: dict) -> dict:
    """One row of a live comparison table: CACC, ASR, the filter rates and the ASR reduction."""
    return {"defense": name, "CACC": metrics["cacc"], "ASR": metrics["asr"], "FRR": metrics.get("frr"),
            "FAR": metrics.get("far"), "CACC_all": metrics.get("cacc_all", metrics["cacc"]),
            "ASR reduction": 1 - metrics["asr"] / victim["asr"], "seconds": seconds, "source": source}


def grid_matrix(*, frame: pd.DataFrame, metric: str, datasets: list[str], attacks: list[str],
                defenses: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`metric` of a results frame as a (dataset, attack) x defense matrix, and its cell labels
    (the value, "—" for a finished cell without one, "not yet run" for the others)."""
    index = pd.MultiIndex.from_product([datasets, attacks], names=["dataset", "attack"])
    values = frame.pivot_table(index=["dataset", "attack"], columns="defense", values=metric,
                               aggfunc="first", dropna=False)
    values = values.reindex(index=index, columns=defenses).astype(float)
    state = frame.pivot_table(index=["dataset", "attack"], columns="defense", values="status",
                              aggfunc="first").reindex(index=index, columns=defenses)
    shown = np.where(values.isna(), "—", values.map("{:.2f}".format))
    labels = pd.DataFrame(np.where(state.eq("done"), shown, NOT_RUN), index=index, columns=defenses)
    return values, labels


ABSTRACT_CLAIM = ("The BeDKD paper's abstract: ASR reduced by 98% on average over three datasets and six attacks, "
                  "CACC not significantly reduced. It is the only published BeDKD number this book cites.")
FLOOR_CAVEAT = ("A relative ASR reduction ignores the floor: a model never poisoned still sends some triggered "
                "inputs to the target, so 100% is out of reach where the floor is high; the column ASR ≤ floor + 5 "
                "pts counts the cells that came down to it.")
README_MARKERS = ("<!-- headline:start (bedkd headline --readme writes this block) -->", "<!-- headline:end -->")


FLOOR_MARGIN = 0.05
"""A defended cell counts as "at the floor" when its ASR is at most the clean model's ASR + 5 points."""


def finished_cells(grids: tuple[str, ...] = ("paper", "full")) -> pd.DataFrame:
    """The finished full-scale defended cells of `grids` (first grid wins for a repeated cell), with ASR reduction
    (1 - defended ASR / victim ASR) and CACC drop (victim CACC - defended CACC) per cell."""
    frames = []
    for grid in grids:
        frame = results_frame(grid)
        if "status" in frame:
            frames.append(frame[(frame["status"] == "done") & (frame["scale"] == "full")
                                & (frame["defense"] != "none")].assign(grid=grid))
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if cells.empty:
        return cells
    cells = cells.drop_duplicates(subset=["dataset", "attack", "defense", "seed"]).dropna(
        subset=["defended_asr", "victim_asr"]).copy()
    cells["asr_reduction"] = 1 - cells["defended_asr"].astype(float) / cells["victim_asr"].astype(float)
    cells["cacc_drop"] = cells["victim_cacc"].astype(float) - cells["defended_cacc"].astype(float)
    victims = victims_frame(scale="full", datasets=sorted(set(cells["dataset"])), attacks=sorted(set(cells["attack"])))
    floors = ({(r.dataset, r.attack): r.floor_asr for r in victims.itertuples()}
              if "floor_asr" in victims else {})
    own = cells["floor_asr"] if "floor_asr" in cells else pd.Series(float("nan"), index=cells.index)
    cells["floor_asr"] = [f if pd.notna(f) else floors.get((d, a), float("nan"))
                          for f, d, a in zip(own, cells["dataset"], cells["attack"])]
    cells["within_floor"] = [float(asr <= floor + FLOOR_MARGIN) if pd.notna(floor) else float("nan")
                             for asr, floor in zip(cells["defended_asr"].astype(float), cells["floor_asr"])]
    return cells


def short_device(device: str) -> str:
    """'cpu (x86_64, 2 cores, 1 threads)' → 'CPU 2 cores'; a GPU's name stays as it is."""
    cores = re.search(r"(\d+) cores", device)
    return device if not device.startswith("cpu") else "CPU" + (f" {cores.group(1)} cores" if cores else "")


def seconds_by_device(cells: pd.DataFrame) -> str:
    """Mean defense seconds per device, e.g. '4324 (CPU 2 cores); 41 (NVIDIA H200)': never averaged across devices."""
    devices = cells["device"].fillna("unknown device").map(short_device)
    means = cells["defense_seconds"].astype(float).groupby(devices).mean()
    return "; ".join(f"{seconds:.0f} ({device})" for device, seconds in means.items())


def headline(cells: pd.DataFrame) -> pd.DataFrame:
    """Per defense over `cells`: how many, mean ASR reduction and CACC drop, detection precision/recall (BeDKD),
    mean defense seconds per device, how many cells reach the clean floor + 5 points (of those whose floor was
    measured), and which datasets and attacks the average covers."""
    if cells.empty:
        return pd.DataFrame()
    seconds = {defense: seconds_by_device(group) for defense, group in cells.groupby("defense")}
    return (cells.groupby("defense")
            .agg(cells_finished=("asr_reduction", "size"), mean_asr_reduction=("asr_reduction", "mean"),
                 mean_cacc_drop=("cacc_drop", "mean"), mean_precision=("precision", "mean"),
                 mean_recall=("recall", "mean"),
                 at_floor=("within_floor", "sum"), floor_known=("within_floor", "count"),
                 datasets=("dataset", lambda s: ", ".join(sorted(set(s)))),
                 attacks=("attack", lambda s: ", ".join(sorted(set(s)))))
            .assign(defense_seconds=lambda t: [seconds[d] for d in t.index])
            .sort_values("mean_asr_reduction", ascending=False))


def headline_markdown(grids: tuple[str, ...] = ("paper", "full")) -> str:
    """The headline as Markdown (a table, its provenance line and the abstract's claim), computed from results/."""
    cells = finished_cells(grids)
    if cells.empty:
        return f"No full-scale cell has finished yet: no headline.\n\n{ABSTRACT_CLAIM}\n"
    table = headline(cells)
    lines = ["| defense | cells | mean ASR reduction | mean CACC drop | ASR ≤ floor + 5 pts | precision | recall "
             "| defense s (device) | datasets | attacks |", "|---|---|---|---|---|---|---|---|---|---|"]
    for defense, row in table.iterrows():
        detected = (f"{row.mean_precision:.2f} | {row.mean_recall:.3f}" if pd.notna(row.mean_precision) else "— | —")
        at_floor = f"{int(row.at_floor)} of {int(row.floor_known)}" if row.floor_known else "floor not measured"
        lines.append(f"| {defense} | {row.cells_finished} | {row.mean_asr_reduction:.1%} | {row.mean_cacc_drop * 100:+.1f} pts"
                     f" | {at_floor} | {detected} | {row.defense_seconds} | {row.datasets} | {row.attacks} |")
    lines += ["", "Per defense and dataset (mean ± 95% t-interval over seeds where there are several):", ""]
    by_dataset = book_grid.headline_by_dataset(cells)
    order = {defense: i for i, defense in enumerate(table.index)}
    lines += _markdown_table(by_dataset.sort_values(["defense", "dataset"], key=lambda c: c.map(order)
                                                    if c.name == "defense" else c))
    note = provenance_note(cells)
    benchmarks = benchmarks_markdown()
    return "\n".join(lines) + f"\n\n{note} Full-scale cells only; CACC drop > 0 means the defense " \
        f"lost accuracy. The floor is the ASR of a model trained on the same rows without poison (from the cell's own " \
        f"report, else from another grid's report of the same victim, e.g. `paper`'s `none` cell).\n\n" + \
        (f"{benchmarks}\n\n" if benchmarks else "") + f"{ABSTRACT_CLAIM} {FLOOR_CAVEAT}\n"


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    return ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)] + [
        "| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]


def benchmarks_markdown() -> str:
    """One line per benchmark under results/benchmarks/ (book build, BeDKD speed, quick victim, full-scale cell on
    the CPU), with its commit and device."""
    lines = []
    book_file, bedkd_file = store.RESULTS_DIR / "benchmarks" / "book.json", store.RESULTS_DIR / "benchmarks" / "bedkd.json"
    if book_file.is_file():
        run = json.loads(book_file.read_text())
        budget = run["budget_seconds"]
        lines.append(f"- Quick book build (`benchmarks/bench_book.py`): {run['warm_seconds']:.0f} s with the victims "
                     f"cached ({run['warm_seconds'] / budget:.2f} x the {budget / 60:.0f}-min budget), "
                     f"{run['cold_seconds']:.0f} s from an empty cache ({run['cold_seconds'] / budget:.2f} x); "
                     f"{_benchmark_provenance(run)}.")
    if bedkd_file.is_file():
        run = json.loads(bedkd_file.read_text())
        ref, ours = run["results"]["reference schedule"], run["results"]["as implemented"]
        lines.append(f"- BeDKD's AKD against the reference code's schedule (`benchmarks/bench_bedkd.py`, "
                     f"{run['scale']} scale, {run['akd_epochs']} epochs, reference evaluation "
                     f"{run.get('reference_evaluation', 'length-sorted (an earlier version of the benchmark)')}): "
                     f"{ref['seconds']:.0f} s vs {ours['seconds']:.0f} s, "
                     f"{run['speedup']:.2f}x faster, final metrics "
                     f"{'identical' if run['identical_metrics'] else 'different'}; {_benchmark_provenance(run)}.")
    victim_file = store.RESULTS_DIR / "benchmarks" / "quick-victim.json"
    if victim_file.is_file():
        run = json.loads(victim_file.read_text())
        now, before = run["runs"]["quick now"], run["runs"]["quick before"]
        lines.append(f"- The quick victim (`benchmarks/bench_victim.py --compare-quick`, {run['dataset']} {run['attack']}, "
                     f"{run['train_rows']} rows): {_victim_run(now)} vs {_victim_run(before)} before, "
                     f"{before['seconds'] / now['seconds']:.2f}x faster; {_benchmark_provenance(run)}.")
    full_file = store.RESULTS_DIR / "benchmarks" / "full-cpu.json"
    if full_file.is_file():
        run = json.loads(full_file.read_text())
        now, before = run["sides"]["now"], run["sides"]["before"]
        lines.append(f"- A full-scale cell on the CPU (`benchmarks/bench_full_cpu.py`, {run['dataset']} {run['attack']}, "
                     f"victim + bedkd-fixed): {now['seconds']['cell']:.0f} s vs {before['seconds']['cell']:.0f} s "
                     f"with the settings before, {run['speedup']:.2f}x faster (target 3x); defended CACC "
                     f"{now['defended']['cacc']:.3f} vs {before['defended']['cacc']:.3f} "
                     f"({_points(now['defended']['cacc'] - before['defended']['cacc'])}), ASR "
                     f"{now['defended']['asr']:.3f} vs {before['defended']['asr']:.3f} (floor "
                     f"{run['clean_floor']['asr']:.3f}); {_benchmark_provenance(run)}.")
    return "\n".join(lines)


def _victim_run(run: dict) -> str:
    config = run["config"]
    return (f"{run['seconds']:.0f} s ({config['epochs']} epoch(s) of {config['batching']} batches of "
            f"{config['batch_size']}: CACC {run['cacc']:.3f}, ASR {run['asr']:.3f})")


def _points(difference: float) -> str:
    """A CACC difference in points, and whether it is within the benchmark's one point."""
    within = "within 1 point" if abs(difference) <= 0.01 else "higher now" if difference > 0 else "LOWER now"
    return f"{100 * difference:+.1f} points, {within}"


def _benchmark_provenance(run: dict) -> str:
    prov = run["provenance"]
    return f"commit {prov['git_commit'][:12]}, {prov['device']}, {prov['date'][:10]}"


def write_readme_headline(readme: Path, *, grids: tuple[str, ...] = ("paper", "full")) -> bool:
    """Replace the block between README_MARKERS in `readme` with the current headline; True if it changed."""
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise DataError(f"{readme}: no headline block; add the two lines {start!r} and {end!r} where it goes")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    new = f"{before}{start}\n{headline_markdown(grids)}{end}{after}"
    readme.write_text(new)
    return new != text

