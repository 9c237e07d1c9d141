"""Which cell starts next when several run at once: never two that may train the same model, new models first.

Shared by the Ray backend (a cluster) and the process-pool backend (one machine, e.g. one GPU with many CPU
cores): both hand `schedule` a way to start a cell and a way to wait for the next one to end.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Hashable

from ..store import REPORT, read_json, write_json_atomic
from .grid import Cell
from .status import DONE, ERROR, FAILED


def victim_keys(cell: Cell) -> list[tuple]:
    """What identifies the models a cell may have to train: its poisoned victim and, with the floor, the clean one
    (scale and model are the same for every cell of a sweep)."""
    attack = json.dumps(cell.attack_config().resolved(cell.dataset_name).asdict(), sort_keys=True)
    keys = [("victim", cell.dataset_name, attack, cell.seed)]
    if cell.with_floor:
        keys.append(("clean", cell.dataset_name, cell.seed))
    return keys


def schedule(todo: list[Cell], *, workers: int, start: Callable[[Cell], Hashable],
             wait: Callable[[list], list[tuple[Hashable, dict | None, Exception | None]]],
             on_done: Callable[[dict], bool], lost: Callable[[Cell, Exception], dict]) -> None:
    """Run `todo`, at most `workers` at a time.

    start(cell) → a handle; wait(handles) → [(handle, outcome or None, error or None)] for those that ended
    (error: the worker died); lost(cell, error) → the outcome to record for it; on_done(outcome) → True to start
    no more cells. Cells that would train a model not yet cached start first, so the victims of a grid are
    trained early and side by side; a cell never starts while another in flight may be training one of its
    models (they would train it twice and race writing the cache); once one has finished, the rest share it.
    """
    keys = {cell.id: victim_keys(cell) for cell in todo}
    warm: set = set()  # models some finished cell of this sweep has cached
    building: dict = {}  # model key → cells in flight that may be training it

    def can_start(cell: Cell) -> bool:
        return all(key in warm or not building.get(key) for key in keys[cell.id])

    def builds(cell: Cell) -> bool:
        return not all(key in warm for key in keys[cell.id])

    queue, in_flight = list(todo), {}
    stop = False
    while (queue and not stop) or in_flight:
        while queue and not stop and len(in_flight) < workers:
            startable = [c for c in queue if can_start(c)]
            cell = next((c for c in startable if builds(c)), startable[0] if startable else None)
            if cell is None:
                break
            queue.remove(cell)
            for key in keys[cell.id]:
                building[key] = building.get(key, 0) + 1
            in_flight[start(cell)] = cell
        for handle, outcome, error in wait(list(in_flight)):
            cell = in_flight.pop(handle)
            if error is not None:
                outcome = lost(cell, error)
            for key in keys[cell.id]:
                building[key] -= 1
                if outcome["state"] == DONE:
                    warm.add(key)
            stop = on_done(outcome) or stop


def record_lost_worker(cell: Cell, err: Exception, kwargs: dict) -> dict:
    """The outcome of a cell whose worker died, recorded in error.json unless the cell had finished."""
    folder = cell.dir(kwargs["out_dir"])
    message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    if read_json(folder / REPORT) is None:
        write_json_atomic(folder / ERROR, {"cell": cell.id, "error_type": type(err).__name__, "message": message,
                                           "traceback": str(err), "scale": kwargs["scale"], "model": kwargs["model"],
                                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "sweep": kwargs.get("sweep_info") or {}})
    return {"cell": cell.id, "state": FAILED, "detail": f"{type(err).__name__}: {message}", "seconds": 0.0}
