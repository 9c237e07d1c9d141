"""`bedkd compare`: one cached victim, several defenses on it, one table (CSV, JSON and Markdown).

Every defense gets the same defender data as `run_experiment` gives BeDKD: the clean pool and the suspect
training set without poison flags. Columns:

- CACC / ASR after the defense. For input filters (STRIP, RAP) CACC is over accepted clean inputs and a
  rejected triggered input counts as an attack failure; FRR (clean inputs rejected) and FAR (triggered inputs
  accepted) are reported beside them (see `metrics.evaluate_defense`). ONION's inputs are sanitised.
- Detection precision / recall of the suspect rows a defense flags (BeDKD, CUBE), against the oracle flags.
- Defender data used (rows of the clean, suspect and dev sets), and wall time of the defense and of its
  evaluation. A defense that cannot run here (ONION without a causal LM) is a row with status "not run: …".

Usage: `bedkd compare --dataset sst2 --attack badnets --defenses bedkd,finetune,strip --scale quick --out DIR`,
or `compare(...)` from Python. Each defense runs through the one harness, `experiments.run_defense`.
"""
from __future__ import annotations

import csv
import io
import math
import time
import traceback
from pathlib import Path

from .attacks import AttackConfig
from .data import DataError
from .defenses import DEFENSES, NotRunnable
from .experiments import (VictimModifiedError, check_out_dir, clean_floor, defense_config, evaluate_victim,
                          get_scale, prepare, run_defense)
from .options import coerce, label, options_of
from .store import provenance, write_json_atomic
from .victim import describe_model

COLUMNS = ["defense", "kind", "status", "cacc", "asr", "frr", "far", "cacc_all", "det_precision", "det_recall",
           "n_flagged", "clean_rows", "suspect_rows", "dev_rows", "eval_clean", "eval_triggered", "defense_s", "eval_s"]


def parse_defenses(text: str | list[str]) -> list[str]:
    """Defense names from "a,b,c" (or a list), in order, without repeats; unknown names raise a DataError."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise DataError(f"unknown defense(s) {', '.join(map(repr, unknown))}: valid are {', '.join(DEFENSES)}")
    if not names:
        raise DataError(f"no defense given: choose from {', '.join(DEFENSES)}")
    return list(dict.fromkeys(names))


def parse_settings(items: list[str] | None, names: list[str]) -> dict[str, dict]:
    """`--set NAME.FIELD=VALUE` items → {name: {field: typed value}}; errors name the bad item."""
    options: dict[str, dict] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot:
            raise DataError(f"--set {item!r}: use DEFENSE.FIELD=VALUE, e.g. strip.repeat=10")
        if name not in names:
            raise DataError(f"--set {item!r}: defense {name!r} is not among --defenses ({', '.join(names)})")
        fields = options_of(DEFENSES[name].config_cls)
        if field not in fields:
            raise DataError(f"--set {item!r}: {name} has no option {field!r}; valid are "
                            f"{', '.join(sorted(fields)) or 'none'}")
        try:
            cls = DEFENSES[name].config_cls
            options.setdefault(name, {})[field] = coerce(cls, field, value, text=True, what=label(cls))
        except DataError as err:
            raise DataError(f"--set {item!r}: {err}") from None
    return options


def _row(name: str, status: str = "done", **values) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(defense=name, kind=DEFENSES[name].kind, status=status, **values)
    return row


def compare(*, dataset: str, attack: AttackConfig, defenses: str | list[str], scale: str | None = None,
            model: str | None = None, seed: int = 0, out: str | Path | None = None,
            options: dict[str, dict] | None = None, with_floor: bool = True, log=print) -> dict:
    """Run every defense on one victim; return (and with `out`, write) {"rows": [...], ...}."""
    started = time.perf_counter()
    run_provenance = provenance()
    names = parse_defenses(defenses)
    scale_name = get_scale(scale).name
    options = options or {}
    target = attack.resolved(dataset).target_label
    configs = {n: defense_config(n, scale=scale_name, target_label=target, options=options.get(n)) for n in names}
    if out:
        check_out_dir(out)

    def check(data):  # before the victim is trained, naming the defense short of data
        for n in names:
            DEFENSES[n].check_data(data, configs[n])

    prepared = prepare(dataset=dataset, attack=attack, scale=scale_name, model=model, seed=seed, check=check)
    defender = prepared.defender_data()
    t0 = time.perf_counter()
    victim_metrics = evaluate_victim(prepared)
    rows = [_row("none", cacc=victim_metrics["cacc"], asr=victim_metrics["asr"], eval_s=time.perf_counter() - t0,
                 eval_clean=len(prepared.clean_test), eval_triggered=len(prepared.triggered_test),
                 clean_rows=0, suspect_rows=0, dev_rows=0, defense_s=0.0)]
    rows[0]["kind"] = "no defense (the victim)"
    log(f"[compare] victim: CACC {victim_metrics['cacc']:.3f} ASR {victim_metrics['asr']:.3f}")
    floor = None
    if with_floor:
        floor = clean_floor(prepared)
        log(f"[compare] clean-model floor: CACC {floor['cacc']:.3f} ASR {floor['asr']:.3f}")
    details = {}
    table = {
        "dataset": dataset, "attack": prepared.attack.asdict(), "scale": scale_name, "seed": seed,
        "model": describe_model(prepared.victim_config.model), "victim_config": prepared.victim_config.asdict(),
        "victim_from_cache": prepared.victim.from_cache, "clean_floor": floor,
        "sizes": {"victim_train": len(prepared.poisoned.data), "poisoned_rows": prepared.poisoned.poison_count,
                  "clean_pool": len(defender.clean), "clean_test": len(prepared.clean_test),
                  "triggered_test": len(prepared.triggered_test)},
        "defenses": {n: {"name": n, **configs[n].asdict()} for n in names},
        "columns": COLUMNS, "rows": rows, "details": details, "complete": False, "provenance": run_provenance,
    }
    for n in names:
        if n == "none":
            continue
        log(f"[compare] {n} ...")
        try:
            run = run_defense(prepared=prepared, name=n, config=configs[n])
        except NotRunnable as err:
            rows.append(_row(n, status=f"not run: {err}"))
            log(f"[compare] {n}: not run ({err})")
            continue
        except VictimModifiedError:
            raise
        except Exception as err:  # one broken defense must not cost the others' (long) runs
            rows.append(_failed(n, err, log))
            continue
        used, det, metrics = run.summary.get("defender_rows", {}), run.detection or {}, run.metrics
        rows.append(_row(n, cacc=metrics["cacc"], asr=metrics["asr"], frr=metrics.get("frr"), far=metrics.get("far"),
                         cacc_all=metrics.get("cacc_all"), det_precision=det.get("precision"),
                         det_recall=det.get("recall"), n_flagged=det.get("n_flagged"), clean_rows=used.get("clean"),
                         suspect_rows=used.get("suspect"), dev_rows=used.get("dev"),
                         eval_clean=metrics.get("n_clean", len(prepared.clean_test)),
                         eval_triggered=metrics.get("n_triggered", len(prepared.triggered_test)),
                         defense_s=run.seconds, eval_s=run.eval_seconds))
        details[n] = {"summary": _jsonable(run.summary), "metrics": metrics}
        extra = "".join(f" {k.upper()} {metrics[k]:.3f}" for k in ("frr", "far") if k in metrics)
        log(f"[compare] {n}: CACC {metrics['cacc']:.3f} ASR {metrics['asr']:.3f}{extra} "
            f"({run.seconds:.0f} s + {run.eval_seconds:.0f} s eval)")
        del run
        if out:  # a partial table after every defense: a long run killed half-way keeps what it measured
            table["seconds_total"] = round(time.perf_counter() - started, 1)
            write_tables(table, Path(out))
    table.update(complete=True, seconds_total=round(time.perf_counter() - started, 1))
    if out:
        write_tables(table, Path(out))
    return table


def _failed(name: str, err: Exception, log) -> dict:
    traceback.print_exc()
    log(f"[compare] {name}: FAILED ({type(err).__name__}: {err})")
    return _row(name, status=f"failed: {type(err).__name__}: {err}")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _fmt(value, column: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.1f}" if column.endswith("_s") else f"{value:.3f}"
    return str(value)


def to_markdown(table: dict) -> str:
    head = (f"# Defense comparison: {table['dataset']} · {table['attack']['name']} · {table['scale']} · "
            f"seed {table['seed']}\n\n")
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table["rows"]:
        lines.append("| " + " | ".join(_fmt(row[c], c).replace("|", "/") for c in cols) + " |")
    notes = ["", "CACC of an input filter is over accepted clean inputs; its ASR counts a rejected triggered input "
             "as an attack failure; FRR = clean inputs rejected, FAR = triggered inputs accepted; cacc_all = clean "
             "inputs accepted and classified correctly, out of all (a rejection counts as an error). "
             "clean/suspect/dev_rows = defender rows the defense used; eval_* = test rows evaluated."]
    if table.get("clean_floor"):
        f = table["clean_floor"]
        notes.append(f"Clean-model floor (same rows, no poison): CACC {f['cacc']:.3f}, ASR {f['asr']:.3f}.")
    lm = table.get("details", {}).get("onion", {}).get("summary", {}).get("lm")
    if lm:
        notes.append(f"ONION's causal LM: {lm}.")
    if not table.get("complete", True):
        notes.append("PARTIAL: the run had not finished every defense when this table was written.")
    notes.append(f"Total wall time {table.get('seconds_total', 0):.0f} s on {table['provenance']['device']}; "
                 f"commit {table['provenance']['git_commit']}.")
    return head + "\n".join(lines) + "\n" + "\n\n".join(notes) + "\n"


def to_csv(table: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table["columns"])
    writer.writeheader()
    for row in table["rows"]:
        writer.writerow({c: ("" if row[c] is None else row[c]) for c in table["columns"]})
    return buffer.getvalue()


def write_tables(table: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", table)
    (out / "compare.csv").write_text(to_csv(table))
    (out / "compare.md").write_text(to_markdown(table))
