"""The package's face: public API, CLI help, notebooks committed clean, lint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bulkmail_kernel
from bulkmail_kernel.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_all_matches_the_documented_api() -> None:
    documented = set()
    for line in _readme_section("Public API").splitlines():
        if line.startswith("- "):
            head = line[2:].split(" — ")[0]
            documented |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", head))
    assert documented == set(bulkmail_kernel.__all__)
    for name in bulkmail_kernel.__all__:
        assert getattr(bulkmail_kernel, name).__doc__, f"{name} has no docstring"


def test_every_cli_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    assert all(helps.values())
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.dest != "help":
                assert action.help, f"bulkmail {name}: option {action.dest} has no help"


def test_cli_migrate_reports_revision(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(bulkmail_kernel.__file__).parent / "migrations")
    )
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert main(["migrate", "--db", sqlite_url]) == 0
    assert f"at revision {head}" in capsys.readouterr().out


def test_cli_error_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--db", "not-a-url"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bulkmail migrate: database URL 'not-a-url' is not a SQLAlchemy URL")


def test_console_script_is_installed() -> None:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe, "the bulkmail console script is not installed next to this Python"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "migrate" in out
    assert "import" in out


def test_notebooks_are_committed_clean() -> None:
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{nb_path.name} has outputs"
                assert cell.get("execution_count") is None, f"{nb_path.name} has execution counts"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "test-command" in ci
    assert "pytest" in _readme_section("Set up")


def test_package_is_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment (pip install -e '.[test]')")
    proc = subprocess.run(
        [ruff, "check", "bulkmail_kernel", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_is_mypy_clean() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed in this environment (pip install -e '.[test]')")
    proc = subprocess.run(
        [mypy, "bulkmail_kernel"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
