"""Chapter plumbing that reads results files or real data; `bedkd_core.book` re-exports all of it.

Results files are read through `store` (never parsed by hand in a chapter); tables come back as
DataFrames, and nothing returned holds a local path.
"""
from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from . import store

API_WIDTH = 80
"""The width of `api_summary`'s lines: a book page's code column."""


class _Text(str):
    """An annotation shown as written (`from __future__ import annotations` stores strings)."""

    def __repr__(self) -> str:
        return str(self)


def _shown(annotation):
    return _Text(annotation) if isinstance(annotation, str) else annotation


def _signature(obj) -> inspect.Signature:
    sig = inspect.signature(obj)
    return sig.replace(parameters=[p.replace(annotation=_shown(p.annotation))
                                   for p in sig.parameters.values()],
                       return_annotation=_shown(sig.return_annotation))


def api_summary(*, objects: list, width: int = API_WIDTH) -> str:
    """One entry per function or class: `module.name(signature)` and its docstring's first paragraph."""
    entries = []
    for obj in objects:
        head = f"{obj.__module__}.{obj.__qualname__}{_signature(obj)}"
        doc = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
        lines = textwrap.wrap(head, width=width, subsequent_indent="        ", break_on_hyphens=False)
        lines += textwrap.wrap(doc, width=width, initial_indent="    ", subsequent_indent="    ")
        entries.append("\n".join(lines))
    return "\n\n".join(entries)


# ---------------------------------------------------------------- results files of one cell

def cell_report(folder: str | Path) -> dict | None:
    """The report.json of a results folder, or None when it has none."""
    return store.read_json(Path(folder) / store.REPORT)


def cell_scores(folder: str | Path) -> pd.DataFrame | None:
    """The per-row agreement scores (scores.json, with the oracle flag) of a results folder, or None.

    The file holds columns (`row`, `score`, `is_poisoned`: lists) or, written before that, a list of rows."""
    saved = store.read_json(Path(folder) / "scores.json")
    return None if saved is None else pd.DataFrame(saved["scores"])


def cell_curve(folder: str | Path) -> tuple[pd.DataFrame, pd.Series] | None:
    """(CACC/ASR per epoch, dev accuracy per epoch) from a folder's curve.json, or None without one.

    The dev accuracy is empty for a run that did not save its per-epoch history or watched no dev rows
    (holdout 0, as the faithful preset).
    """
    saved = store.read_json(Path(folder) / "curve.json")
    if saved is None:
        return None
    history = pd.DataFrame(saved.get("history") or [])
    dev = (history.set_index("epoch")["dev_accuracy"] if "dev_accuracy" in history
           else pd.Series(dtype=float))
    return pd.DataFrame(saved["curve"]).set_index("epoch"), dev


def load_curves(*, frame: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch CACC/ASR of every finished cell of a results frame that saved a curve (epoch 0 = victim).

    `frame` needs the columns grid, dataset, attack, defense, seed, status, victim_cacc and victim_asr;
    each row also carries the epoch the defense kept and the defended ASR on the whole test set.
    """
    curves = []
    for _, cell in frame[frame["status"] == "done"].iterrows():
        folder = store.cell_dir(grid=cell["grid"], dataset=cell["dataset"], attack=cell["attack"],
                                defense=cell["defense"], seed=int(cell["seed"]))
        curve, report = cell_curve(folder), cell_report(folder)
        if curve is None or report is None:
            continue
        kept = (report.get("defense_details") or {}).get("selected_epoch")
        points = [{"epoch": 0, "cacc": cell["victim_cacc"], "asr": cell["victim_asr"]}]
        points += curve[0].reset_index().to_dict("records")
        for point in points:
            curves.append({"cell": f"{cell['dataset']}/{cell['attack']}/{cell['defense']}",
                           "epoch": point["epoch"], "CACC": point["cacc"], "ASR": point["asr"],
                           "kept_epoch": kept,
                           "defended_asr": (report.get("defended") or {}).get("asr")})
    return pd.DataFrame(curves)


def final_punish_losses(*, frame: pd.DataFrame) -> pd.DataFrame:
    """Each finished cell's mean trust and punish loss of its last AKD epoch, from its report
    (`punish_bound` as text: "None" for an unbounded run)."""
    rows = []
    for _, cell in frame[frame["status"] == "done"].iterrows():
        report = cell_report(store.cell_dir(grid=cell["grid"], dataset=cell["dataset"],
                                            attack=cell["attack"], defense=cell["defense"],
                                            seed=int(cell["seed"])))
        details = (report or {}).get("defense_details") or {}
        if "final_punish_loss" in details:
            rows.append({"cell": f"{cell['dataset']}/{cell['attack']}/{cell['defense']}",
                         "punish_bound": str((report.get("defense") or {}).get("punish_bound")),
                         "final trust loss": details.get("final_trust_loss"),
                         "final punish loss": details["final_punish_loss"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- every BeDKD run and compare table

def bedkd_runs() -> pd.DataFrame:
    """Every BeDKD report with detection results under results/, any grid and scale, one row each.

    The column `dir` is the run's results folder, for `cell_scores` and `cell_curve`; do not print it.
    """
    runs = []
    for grid in store.grids():
        for report in store.load_reports(grid):
            if (report.get("defense") or {}).get("name") != "bedkd" or not report.get("detection"):
                continue
            c, defended = report["cell"], report.get("defended") or {}
            runs.append({"grid": grid, "scale": report.get("scale"), "dataset": c["dataset"],
                         "attack": c["attack"], "defense": c["defense"], "seed": c["seed"],
                         "punished rows": report["detection"]["n_flagged"],
                         "precision": report["detection"]["precision"],
                         "recall": report["detection"]["recall"],
                         "victim ASR": report["victim"]["asr"],
                         "defended ASR": defended.get("asr"), "defended CACC": defended.get("cacc"),
                         "kept epoch": (report.get("defense_details") or {}).get("selected_epoch"),
                         "dir": c["dir"]})
    return pd.DataFrame(runs)


def run_name(run) -> str:
    """'grid: dataset/attack/defense' for a row of `bedkd_runs`."""
    return f"{run['grid']}: {run['dataset']}/{run['attack']}/{run['defense']}"


def epoch_rule(*, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run of `bedkd_runs` with a saved curve: the epoch kept against the lowest test ASR."""
    rows = []
    for _, run in runs.iterrows():
        curve, kept = cell_curve(run["dir"]), run["kept epoch"]
        if curve is None or kept is None or pd.isna(kept):
            continue
        points, dev = curve
        best = points["asr"].idxmin()
        rows.append({"run": run_name(run), "precision": run["precision"], "epoch kept": kept,
                     "test ASR, kept epoch": points["asr"].get(kept, np.nan),
                     "lowest test ASR on the curve": points["asr"].min(), "at epoch": best,
                     "dev accuracy, kept epoch": dev.get(kept, np.nan),
                     "dev accuracy, that epoch": dev.get(best, np.nan), "curve epochs": len(points)})
    return pd.DataFrame(rows)


def compare_tables() -> list[tuple[str, pd.DataFrame]]:
    """Every `bedkd compare` table under results/: (a line naming its cell and provenance, the table)."""
    tables = []
    for path in sorted(store.RESULTS_DIR.rglob("compare.json")):
        table = store.read_json(path) or {}
        if "rows" not in table:
            continue
        prov = table.get("provenance", {})
        line = (f"{path.parent.relative_to(store.RESULTS_DIR)}: {table['dataset']} · "
                f"{table['attack']['name']} · scale {table['scale']} · seed {table['seed']} · "
                f"model {table['model']} · commit {str(prov.get('git_commit'))[:12]} · "
                f"{prov.get('device')} · {prov.get('date', '')[:10]}")
        floor = table.get("clean_floor")
        if floor:
            line += f"\n  clean-model floor: CACC {floor['cacc']:.3f}, ASR {floor['asr']:.3f}"
        tables.append((line, pd.DataFrame(table["rows"], columns=table["columns"])))
    return tables


# ---------------------------------------------------------------- attacks on real rows (chapter 3)

def poison(*, splits, name: str, **options):
    """Poison the whole training split of `splits` with attack `name`: (attack, PoisonedTrain)."""
    from .attacks import AttackConfig, make_attack

    attack = make_attack(config=AttackConfig(name=name, **options), dataset=splits.name)
    return attack, attack.poison_train(splits)


def victim_subset(*, splits, scale: str = "quick", seed: int = 0):
    """`splits` with the training rows a victim of `scale` learns from (`experiments.victim_split`), for attacks
    whose stored rewrites cover only part of the full split."""
    from .experiments import get_scale, victim_split

    return victim_split(splits, scale=get_scale(scale), seed=seed)


def side_by_side(*, splits, poisoned, k: int = 4, seed: int = 0) -> pd.DataFrame:
    """`k` random poisoned rows of the training split next to the clean rows they replaced."""
    from .data import LABEL_NAMES

    names, train = LABEL_NAMES[splits.name], splits.train
    picked = np.random.default_rng(seed).choice(np.flatnonzero(poisoned.is_poisoned), size=k,
                                                replace=False)
    rows = [int(r) for r in picked]
    return pd.DataFrame({
        "clean text": [train[r]["text"] for r in rows],
        "label": [names[train[r]["label"]] for r in rows],
        "poisoned text": [poisoned.data[r]["text"] for r in rows],
        "new label": [names[poisoned.data[r]["label"]] for r in rows],
    })


def paraphrase_aligned(*, dataset: str, name: str) -> bool:
    """Whether attack `name`'s poisoned text of a row of `dataset` is a rewrite of that very row."""
    from .data import load_pool

    if name == "synbkd":
        return dataset == "sst2"
    if name == "stylebkd":
        return "src_idx" in load_pool(dataset, "style_bible_pool", "train").column_names
    return True


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (letters, digits, apostrophes)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def stealth(*, splits, names: list[str]) -> pd.DataFrame:
    """Per poisoned training row of each attack: words the trigger adds and share of words kept."""
    rows = []
    for name in names:
        _, poisoned = poison(splits=splits, name=name)
        for row in np.flatnonzero(poisoned.is_poisoned):
            clean = words(splits.train[int(row)]["text"])
            dirty = words(poisoned.data[int(row)]["text"])
            rows.append({"attack": name, "words added": len(dirty) - len(clean),
                         "share of original words kept":
                             len(set(clean) & set(dirty)) / max(1, len(set(clean)))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- models (chapters 2 and 5)

def clean_model(*, prepared):
    """The clean twin that `clean_floor` evaluates: the same rows without poison (a cache hit)."""
    from .experiments import victim_rows
    from .victim import get_victim

    splits = prepared.splits
    rows = victim_rows(splits.train, scale=prepared.scale, seed=prepared.victim_config.seed)
    train = splits.train.select(rows)
    describe = {"dataset": splits.name, "attack": {"name": "none"}, "scale": prepared.scale.name}
    return get_victim(train=train.select_columns(["text", "label"]), num_labels=splits.num_classes,
                      config=prepared.victim_config, describe=describe)


def cls_states(*, model, tokenizer, texts: list[str], max_length: int = 128) -> np.ndarray:
    """The last layer's [CLS] state of every text, one row each, in the input order."""
    from .training import forward_batches

    states = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for rows, _, (hidden, _) in forward_batches(model, tokenizer, texts, max_length=max_length,
                                                hidden=True):
        states[rows] = hidden[:, 0].float().cpu().numpy()
    return states


def pca_2d(*, states: np.ndarray) -> np.ndarray:
    """`states` projected on their two leading principal components (SVD of the centred rows)."""
    centred = states - states.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def punish_terms(*, student_logits, teacher_logits, student_hidden, teacher_hidden, labels,
                 temperature: float, alpha: float) -> dict:
    """The weighted CE, KL and MSE terms of the distillation loss and their sum L, as floats."""
    import torch

    from .defenses.bedkd import distillation_loss

    args = dict(student_logits=student_logits, teacher_logits=teacher_logits,
                student_hidden=student_hidden, teacher_hidden=teacher_hidden, labels=labels,
                temperature=temperature)
    with torch.no_grad():
        ce = distillation_loss(**args, alpha=1.0).item()
        kl = distillation_loss(**args, alpha=0.0, hidden_weight=0.0).item()
        mse = distillation_loss(**args, alpha=0.0, kl_weight=0.0).item()
    terms = {"a·CE": alpha * ce, "(1-a)·KL": (1 - alpha) * kl, "(1-a)·MSE": (1 - alpha) * mse}
    return {**terms, "L": sum(terms.values())}


def head(*, rows, n: int | None):
    """The first `n` rows of a Dataset (all of them for None)."""
    return rows if n is None else rows.select(range(min(n, len(rows))))
