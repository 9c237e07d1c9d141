"""The Ray backend of `run_sweep`: cells as Ray tasks, never two at once that may train the same model."""
from __future__ import annotations

import json
import os
import time

from ..store import REPORT, read_json, write_json_atomic
from .grid import Cell
from .runner import SweepError, execute_cell
from .status import DONE, ERROR, FAILED


def run_ray(todo: list[Cell], *, workers: int, kwargs: dict, on_done, cpus_per_cell: float | None,
            gpus_per_cell: float | None) -> None:
    """Run `todo` as Ray tasks, `workers` at a time; `on_done(outcome)` returns True to start no more cells."""
    try:
        import ray
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'bedkd_core[ray]' (or: pip install ray)") from None
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        local = {} if address else {"num_cpus": max(workers, os.cpu_count() or 1)}
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="WARNING", **local)
        started_here = True
    try:
        resources = ray.cluster_resources()
        if cpus_per_cell is None:
            cpus_per_cell = max(1, int(resources.get("CPU", 1) // workers))
        if gpus_per_cell is None:
            gpus_per_cell = 1 if resources.get("GPU", 0) >= 1 else 0
        env = {k: v for k, v in os.environ.items() if k.startswith(("BEDKD_", "HF_", "TRANSFORMERS_"))}
        env["TQDM_DISABLE"] = "1"  # the driver shows the progress; per-epoch bars from workers would interleave
        task = ray.remote(execute_cell).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0,
                                                runtime_env={"env_vars": env})
        keys = {cell.id: victim_keys(cell) for cell in todo}
        warm: set = set()  # victims some finished cell of this sweep has cached
        building: dict = {}  # victim key → cells in flight that may be training it

        def can_start(cell: Cell) -> bool:
            """Never two cells at once that may train the same (not yet cached) victim or clean-floor model:
            they would train it twice and race writing the cache. Once one has finished, the rest share it."""
            return all(key in warm or not building.get(key) for key in keys[cell.id])

        queue, in_flight = list(todo), {}
        stop = False
        while (queue and not stop) or in_flight:
            while queue and not stop and len(in_flight) < workers:
                cell = next((c for c in queue if can_start(c)), None)
                if cell is None:
                    break
                queue.remove(cell)
                for key in keys[cell.id]:
                    building[key] = building.get(key, 0) + 1
                in_flight[task.remote(cell, **kwargs)] = cell
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the worker died (killed, out of memory): record it like a failure
                    outcome = _record_lost_worker(cell, err, kwargs)
                for key in keys[cell.id]:
                    building[key] -= 1
                    if outcome["state"] == DONE:
                        warm.add(key)
                stop = on_done(outcome) or stop
    finally:
        if started_here:
            ray.shutdown()


def victim_keys(cell: Cell) -> list[tuple]:
    """What identifies the models a cell may have to train: its poisoned victim and, with the floor, the clean one
    (scale and model are the same for every cell of a sweep)."""
    attack = json.dumps(cell.attack_config().resolved(cell.dataset_name).asdict(), sort_keys=True)
    keys = [("victim", cell.dataset_name, attack, cell.seed)]
    if cell.with_floor:
        keys.append(("clean", cell.dataset_name, cell.seed))
    return keys


def _record_lost_worker(cell: Cell, err: Exception, kwargs: dict) -> dict:
    """The outcome of a cell whose worker died, recorded in error.json unless the cell had finished."""
    folder = cell.dir(kwargs["out_dir"])
    message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    if read_json(folder / REPORT) is None:
        write_json_atomic(folder / ERROR, {"cell": cell.id, "error_type": type(err).__name__, "message": message,
                                           "traceback": str(err), "scale": kwargs["scale"], "model": kwargs["model"],
                                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "sweep": kwargs.get("sweep_info") or {}})
    return {"cell": cell.id, "state": FAILED, "detail": f"{type(err).__name__}: {message}", "seconds": 0.0}
