"""A Colab runtime simulated on this machine: run each chapter's Colab copy as a reader opening it from the button.

* A virtual environment with Colab's versions of the packages the chapters touch (`COLAB_VERSIONS`; torch stays
  the local CPU build, Python is this machine's), ipykernel, and a stub `google.colab` module that an IPython
  startup file imports at kernel start, so the setup cell takes its Colab branch. Built once per version list
  under `~/.cache/bedkd-colab-sim/<key>/`, reused while the list is the same.
* Each Colab copy alone in an empty folder with an empty HOME, whose git config points the repository's URL at a
  bare copy of this checkout's HEAD (so the setup cell's `git clone` gets HEAD, not the network); the data preset
  in BEDKD_DATA; `BEDKD_MODEL=minilm` and `HF_HUB_OFFLINE=1` (the hub is out of reach); quick scale.
* Executed top to bottom with nbclient inside that environment; the result says which cells failed, how many
  figures it drew, how long it took and whether `pip freeze` changed for the packages Colab must keep.

    python benchmarks/colab_sim.py [--chapter 02_backdoored_classifiers ...] [--shared-cache] [--keep DIR]
                                   [--json results/benchmarks/colab.json]

Without --shared-cache each chapter starts from an empty victim cache, as in a new Colab runtime: the times
written to --json are what a reader waits (the Colab copies' notes quote them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COLAB_DIR = REPO_ROOT / "colab"

COLAB_VERSIONS = {
    "torch": "2.13.0",  # the CPU wheel on disk; an unpinned torch would download a CUDA build
    "ipywidgets": "7.7.1",
    "datasets": "4.0.0",
    "numpy": "2.1.3",
    "pandas": "2.2.3",
    "matplotlib": "3.10.0",
    "seaborn": "0.13.2",
    "scikit-learn": "1.6.1",
    "transformers": "5.15.0",
    "ipykernel": "6.17.1",
    "ipython": "7.34.0",
    "notebook": "6.5.7",
    "nbclient": "0.10.2",
}
"""Colab's versions (googlecolab/backend-info, August 2026) where PyPI has them for this Python; nbclient runs
the notebook from inside the environment."""

THREADS = 1
"""CPU threads a chapter's kernel gets by default (OMP_NUM_THREADS): a Colab CPU runtime's 2 virtual cores share
one physical core, so the timings written for the notes use one thread."""

KEPT = ("torch", "numpy", "pandas", "ipywidgets")
"""What installing bedkd_core must leave exactly as Colab has it."""

STUB = '"""Stand-in for Colab\'s google.colab: its presence alone selects the setup cell\'s Colab branch."""\n'

DRIVER = r'''
import json, sys, time
import nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(nb, timeout=1800, allow_errors=True, kernel_name="python3",
                                 resources={"metadata": {"path": sys.argv[3]}})
started = time.perf_counter()
client.execute()
nbformat.write(nb, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started}))
'''


@dataclass
class ChapterRun:
    """What one chapter's run in the simulated runtime showed."""

    chapter: str
    seconds: float
    errors: list[str]
    figures: int
    stderr: list[str]
    freeze_changes: dict
    setup_output: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.freeze_changes


def versions_key() -> str:
    return hashlib.sha256(json.dumps([sys.version_info[:2], COLAB_VERSIONS], sort_keys=True).encode()).hexdigest()[:12]


def sim_root() -> Path:
    return Path(os.environ.get("BEDKD_COLAB_SIM_CACHE", Path.home() / ".cache" / "bedkd-colab-sim")) / versions_key()


def build_venv(root: Path | None = None) -> Path:
    """The simulated runtime's virtual environment (built once per version list); its python."""
    root = root or sim_root()
    python = root / "venv" / "bin" / "python"
    if (root / "ready").is_file():
        return python
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True)
    pins = [f"{name}=={version}" for name, version in COLAB_VERSIONS.items()]
    done = subprocess.run([python, "-m", "pip", "install", "-q", *pins], env=_pip_env(root), capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"the simulated Colab runtime did not install:\n{done.stderr[-4000:]}")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "google" / "colab").mkdir(parents=True, exist_ok=True)  # no google/__init__.py: a namespace package
    (site / "google" / "colab" / "__init__.py").write_text(STUB)
    (root / "ready").write_text(json.dumps(COLAB_VERSIONS, indent=1))
    return python


def _pip_env(root: Path) -> dict:
    return {**os.environ, "PIP_CACHE_DIR": str(root / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def freeze(python: Path) -> dict[str, str]:
    """name → version of every installed distribution."""
    out = subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True)
    return {item["name"].lower(): item["version"] for item in json.loads(out.stdout)}


def repository() -> tuple[str, str]:
    """The book's repository URL and branch, from _config.yml."""
    repo = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    return repo["url"], repo["branch"]


def serve_head(scratch: Path) -> Path:
    """A bare repository whose branch (the book's) is this checkout's HEAD: what the setup cell clones."""
    _, branch = repository()
    bare = scratch / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", bare], check=True)
    subprocess.run(["git", "-C", REPO_ROOT, "push", "-q", "--force", bare, f"HEAD:refs/heads/{branch}"], check=True)
    return bare


def reader_home(folder: Path, origin: Path | None) -> Path:
    """An empty HOME but for the IPython startup file that imports the google.colab stub and, given `origin`, the
    git config that redirects the repository's URL there (without it the clone goes to the network)."""
    url, _ = repository()
    home = folder / "home"
    startup = home / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # noqa: F401  (Colab imports it at kernel start)\n")
    if origin is not None:
        subprocess.run(["git", "config", "--file", home / ".gitconfig", f"url.{origin.as_uri()}.insteadOf", url],
                       check=True)
    return home


def run_chapter(python: Path, copy: Path, *, origin: Path | None, data: Path, cache: Path, scratch: Path,
                keep: Path | None = None, threads: int = THREADS) -> ChapterRun:
    """Run one Colab copy in the simulated runtime (the clone from `origin`, None: from the network; the executed
    notebook copied into `keep`); what it showed."""
    folder = scratch / copy.stem
    content = folder / "content"
    content.mkdir(parents=True)
    shutil.copy(copy, content / copy.name)
    home = reader_home(folder, origin)
    env = {"HOME": str(home), "PATH": f"{python.parent}:/usr/bin:/bin", "LANG": "C.UTF-8",
           "BEDKD_BOOK_DIR": str(content / "bedkd-book"), "BEDKD_DATA": str(data), "BEDKD_CACHE": str(cache),
           "BEDKD_MODEL": "minilm", "BEDKD_SCALE": "quick", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "PIP_CACHE_DIR": str(python.parents[2] / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_") and k not in env})  # the local index
    before = freeze(python)
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    executed = folder / f"{copy.stem}.out.ipynb"
    done = subprocess.run([python, driver, content / copy.name, executed, content], env=env, cwd=content,
                          capture_output=True, text=True)
    if done.returncode:
        return ChapterRun(copy.stem, 0.0, [f"the run itself failed: {(done.stdout + done.stderr)[-3000:]}"], 0, [], {})
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(executed, keep / copy.name)
    after = freeze(python)
    changes = {name: [before.get(name), after.get(name)] for name in KEPT if before.get(name) != after.get(name)}
    errors, figures, stderr, printed = _outputs(executed)
    return ChapterRun(copy.stem, round(seconds, 1), errors, figures, stderr, changes, printed)


def _outputs(executed: Path) -> tuple[list[str], int, list[str], str]:
    """Error outputs, figures, stderr outputs and the setup cell's printed text of an executed notebook."""
    nb = json.loads(executed.read_text())
    errors, figures, stderr = [], 0, []
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                errors.append(f"cell {index}: {out['ename']}: {out['evalue']}")
            elif out.get("name") == "stderr":
                stderr.append(f"cell {index}: {''.join(out['text'])[-300:]}")
            elif "image/png" in out.get("data", {}):
                figures += 1
    setup = next(cell for cell in nb["cells"] if cell["cell_type"] == "code")
    printed = "".join("".join(out["text"]) for out in setup["outputs"] if out.get("name") == "stdout")
    return errors, figures, stderr, printed


def simulate(copies: list[Path], *, data: Path, cache: Path | None, keep: Path | None = None,
             threads: int = THREADS) -> list[ChapterRun]:
    """Run notebooks (Colab copies) one after another in the simulated runtime, each as a fresh reader; one
    ChapterRun each. bedkd_core is uninstalled first, so the first setup cell installs it as in a new runtime.
    `cache`: the victim cache they share; None gives each its own empty one, as in a new Colab runtime."""
    python = build_venv()
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "bedkd_core"], capture_output=True)
    with tempfile.TemporaryDirectory(prefix="colab-sim-") as tmp:
        scratch = Path(tmp)
        origin = serve_head(scratch)
        return [run_chapter(python, copy, origin=origin, data=data, cache=cache or scratch / f"cache-{copy.stem}",
                            scratch=scratch, keep=keep, threads=threads) for copy in copies]


def colab_copies(chapters: list[str] | None = None) -> list[Path]:
    """The committed Colab copies of the chapters (all, or those whose stem is named)."""
    copies = sorted(COLAB_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [c for c in copies if not chapters or c.stem in chapters]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", action="append", help="only this Colab copy (its stem; repeatable)")
    parser.add_argument("--json", type=Path, help="write each chapter's time with provenance to this file")
    parser.add_argument("--keep", type=Path, help="copy the executed notebooks into this folder")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"OMP_NUM_THREADS of each chapter's kernel (default {THREADS}, as on Colab)")
    parser.add_argument("--shared-cache", action="store_true",
                        help="share this machine's victim cache (default: an empty one per chapter, as a reader has)")
    args = parser.parse_args()
    from bedkd_core.data import data_root
    from bedkd_core.cache import cache_dir
    from bedkd_core.store import provenance, write_json_atomic

    start_info = provenance()
    cache = cache_dir() if args.shared_cache else None
    runs = simulate(colab_copies(args.chapter), data=data_root(), cache=cache, keep=args.keep,
                    threads=args.threads)
    for run in runs:
        state = "ok" if run.ok else f"FAILED {run.errors} {run.freeze_changes}"
        print(f"{run.chapter}: {run.seconds:7.1f} s, {run.figures} figures, {len(run.stderr)} stderr outputs, {state}")
    if args.json:
        chapters = {r.chapter: {"seconds": r.seconds, "figures": r.figures, "ok": r.ok} for r in runs}
        write_json_atomic(args.json, {"chapters": chapters, "versions": COLAB_VERSIONS,
                                      "backbone": "minilm", "scale": "quick", "threads": args.threads,
                                      "victim_cache": "shared" if args.shared_cache else "empty per chapter",
                                      "provenance": start_info})
    sys.exit(0 if all(r.ok for r in runs) else 1)


if __name__ == "__main__":
    main()
