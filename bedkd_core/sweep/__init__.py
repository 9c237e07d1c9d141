"""Sweeps: run every cell of a grid of experiments, resumably, and say where each cell stands.

A grid is a YAML file in `grids/` (data, not code). Its cells are the product of its datasets, attacks,
defenses and seeds; each cell is one `run_experiment` whose results land in
`<out>/<grid>/<dataset>/<attack>/<defense>/seed<N>/report.json`, the layout `bedkd_core.book` reads.
The labels in the grid become those path components.

Grid file format (every key but `datasets`, `attacks` and `defenses` is optional)::

    name: paper                # results folder <out>/<name>/; default: the file name without .yaml
    description: ...
    scale: full                # default scale of the grid (the CLI's --scale overrides it)
    seeds: [0]
    with_floor: true           # also measure the clean-model ASR floor (one extra, cached, victim per dataset)
    datasets: [sst2, olid]     # a name, or {label:, name:, optional:, requires:, note:}
    attacks:
      - badnets                # shorthand for {label: badnets, name: badnets}: the published settings
      - label: badnets-r0.01   # the attack's folder name in the results
        name: badnets          # a key of bedkd_core.attacks.ATTACKS
        options: {poison_rate: 0.01}   # AttackConfig fields (all but name and seed)
    defenses:
      - none
      - label: bedkd-tau0.05
        name: bedkd            # a key of bedkd_core.defenses.DEFENSES
        options: {tau: 0.05}   # passed to run_experiment(defense_options=...); BeDKD takes `preset` too
      - label: onion
        name: onion
        requires: an ONION baseline in bedkd_core.defenses   # not implemented yet: reported, never run
    exclude: ["agnews/sos/*"]  # cell patterns (dataset/attack/defense/seedN) left out of the product

An entry marked `optional: true` makes its cells optional: listed by `--status`, run only with `--optional`.
An entry with `requires:` names something the library may still lack; while validation fails for it, its cells
are *unsupported*: reported by the sweep and by `--status`, never run and never silently dropped. An invalid entry
without `requires:` is an error that names the file, the entry and the valid choices.

A cell is finished when its `report.json` exists; `run_experiment` writes it atomically and last. The sweep
runs each cell in a hidden staging folder inside the cell folder and moves the artifacts in only when the run
has finished, report.json last, so a killed cell never looks finished and is simply run again. A failed
cell leaves `error.json` (shown by `--status`, retried by the next sweep). A cell folder is locked while a
sweep runs it, so two sweeps over the same results never run the same cell at once.

Modules: `grid` (this format, its validation, the cells), `status` (where a cell stands), `runner` (running a cell
and a sweep), `schedule` (which cell starts next when several run at once), `pool_backend` (cells in worker
processes of one machine), `ray_backend` (cells as Ray tasks), `command` (`bedkd sweep`); the names below are
re-exported here.
"""
from .command import add_command, run_command
from .grid import (ENTRY_KEYS, GRIDS_DIR, LABEL_RE, TOP_KEYS, Cell, Grid, GridError, expected_cells, grid_path,
                   load_grid, match_cell)
from .pool_backend import run_pool
from .ray_backend import run_ray
from .schedule import victim_keys
from .runner import (ARTIFACTS, STAGING_PREFIX, Runner, SweepError, SweepResult, execute_cell, run_cell,
                     run_sweep)
from .status import (DONE, ERROR, FAILED, INTERRUPTED, LOCK, MISMATCH, NOT_RUN, NOT_RUNNABLE, POOL_DIFF, RUNNING,
                     TO_RUN, UNSUPPORTED, CellStatus, cell_status, counts_line, expected_settings, format_status,
                     report_mismatch, summarize_report, sweep_status)

__all__ = [
    "ENTRY_KEYS", "GRIDS_DIR", "LABEL_RE", "TOP_KEYS", "Cell", "Grid", "GridError", "expected_cells", "grid_path",
    "load_grid", "match_cell",
    "DONE", "ERROR", "FAILED", "INTERRUPTED", "LOCK", "MISMATCH", "NOT_RUN", "NOT_RUNNABLE", "POOL_DIFF", "RUNNING",
    "TO_RUN",
    "UNSUPPORTED", "CellStatus", "cell_status", "counts_line", "expected_settings", "format_status",
    "report_mismatch", "summarize_report", "sweep_status",
    "ARTIFACTS", "STAGING_PREFIX", "Runner", "SweepError", "SweepResult", "execute_cell", "run_cell", "run_sweep",
    "run_pool", "run_ray", "victim_keys",
    "add_command", "run_command",
]
