"""Import cost: ``import bulkmail_kernel`` and ``bulkmail --help``, wall time and modules loaded.

Run: python bench/bench_import.py [--runs 15] [--tree DIR]

Every figure comes from fresh interpreters (subprocesses): the best and the median of
``--runs`` wall times, the interpreter's own start (``python -c pass``) on the first
row for reference. Modules are what ``python -X importtime`` lists for one more run:
every module the process imported, the interpreter's start included. The goal is that
neither command loads a data, widget, web or mail-server stack; the script exits 1
when one does.

``--tree`` measures another checkout (e.g. ``git worktree add /tmp/before 37e7c46``)
with this environment's packages: its folder goes first on ``PYTHONPATH``, and so does
this checkout's when ``--tree`` is not given, and each interpreter starts in that folder,
so both are imported the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Stacks that `import bulkmail_kernel` and `bulkmail --help` must not load.
HEAVY = (
    "pandas",
    "numpy",
    "pyarrow",
    "sqlalchemy",
    "alembic",
    "ipywidgets",
    "IPython",
    "matplotlib",
    "aiosmtpd",
    "starlette",
    "uvicorn",
    "httpx",
    "jinja2",
    "openpyxl",
)


def _commands() -> dict[str, list[str]]:
    script = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    if script is None:
        sys.exit("the bulkmail console script is not installed next to this Python")
    return {
        "python -c pass": ["-c", "pass"],
        "import bulkmail_kernel": ["-c", "import bulkmail_kernel"],
        "bulkmail --help": [script, "--help"],
    }


def _run(args: list[str], tree: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter in ``tree`` with ``tree`` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, text=True, check=True, **kwargs
    )


def _wall(args: list[str], tree: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        _run(args, tree, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def _modules(args: list[str], tree: Path) -> list[str]:
    proc = _run(
        ["-X", "importtime", *args], tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    names = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            names.append(line.rsplit("|", 1)[1].strip())
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="interpreters per row (best counts)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure")
    args = parser.parse_args()
    tree = args.tree.resolve()
    probe = ["-c", "import bulkmail_kernel; print(bulkmail_kernel.__file__)"]
    where = _run(probe, tree, capture_output=True).stdout.strip()
    if not Path(where).is_relative_to(tree):
        sys.exit(f"bulkmail_kernel comes from {where}, not from {tree}")
    print(f"tree: {tree} ({args.runs} runs a row)")
    print(f"{'command':<24} {'best ms':>8} {'median ms':>10} {'modules':>8}  heavy stacks loaded")
    missed = False
    for label, cmd in _commands().items():
        wall = _wall(cmd, tree, args.runs)
        names = _modules(cmd, tree)
        heavy = sorted({n.split(".")[0] for n in names} & set(HEAVY))
        if label != "python -c pass" and heavy:
            missed = True
        print(
            f"{label:<24} {min(wall) * 1000:>8.0f} {statistics.median(wall) * 1000:>10.0f} "
            f"{len(names):>8}  {', '.join(heavy) or '-'}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
