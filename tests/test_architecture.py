"""The house, checked: layers and cycles (import-linter), module sizes, one writer of the outbox.

docs/architecture.md describes the same structure in words.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bulkmail_kernel"

#: Longest a module may grow before it holds more than one concept.
MAX_LINES = 600
#: Modules that are long by nature, not by mixing concepts.
LONG_BY_NATURE = {
    "migrations",  # Alembic scripts: generated, never edited after release
}

#: The tables the outbox owns: messages, their bodies and events, suppressions, unsubscribe tokens.
OUTBOX_TABLES = {"Message", "MessageBody", "Event", "Suppression", "UnsubscribeToken"}
#: Who else may write one of them, and why.
OTHER_WRITERS = {
    # An import run records its own contact history (imported/merged/updated) in the same
    # transaction as the contacts it writes; those events name no campaign or message.
    ("contacts", "Event"),
    # The demo data set is bulk-loaded (COPY on PostgreSQL) into a database without contacts,
    # a few suppressions included, and `--replace` deletes exactly those again; it holds no
    # campaign, message or event.
    ("demo", "Suppression"),
}


TABLE_NAMES = {
    "messages": "Message",
    "message_bodies": "MessageBody",
    "events": "Event",
    "suppressions": "Suppression",
    "unsubscribe_tokens": "UnsubscribeToken",
}
RAW_WRITE = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(" + "|".join(TABLE_NAMES) + r")\b", re.I
)


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if not (set(p.relative_to(PACKAGE).parts) & LONG_BY_NATURE)
    )


def test_architecture_contracts_hold() -> None:
    """Layers, the database-free compose/transports and no cycles (pyproject's contracts)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_is_over_the_house_size() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules()
    }
    long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not long, f"split these by concept (at most {MAX_LINES} lines each): {long}"


def _guarded_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """Return (line, table) of every insert/update/delete or ORM construction of an outbox table.

    Names bound to an expression that mentions a table (``_M = cast(sa.Table,
    Message.__table__)``) count as that table, so an alias does not hide a write.
    """
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            mentioned = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            hit = (mentioned & OUTBOX_TABLES) or {aliases[m] for m in mentioned if m in aliases}
            for target in node.targets:
                if isinstance(target, ast.Name) and hit:
                    aliases[target.id] = sorted(hit)[0]

    def table_of(expr: ast.AST) -> str | None:
        for n in ast.walk(expr):
            if isinstance(n, ast.Name) and n.id in OUTBOX_TABLES:
                return n.id
            if isinstance(n, ast.Name) and n.id in aliases:
                return aliases[n.id]
        return None

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("insert", "update", "delete"):
            # sa.insert(Message) / sa.update(_M), or Message.__table__.insert() / _M.update()
            target = node.args[0] if node.args else getattr(func, "value", None)
            table = table_of(target) if target is not None else None
            if table is not None:
                found.append((node.lineno, table))
        elif isinstance(func, ast.Name) and func.id in OUTBOX_TABLES:
            found.append((node.lineno, func.id))  # Event(...) added to a session
    for node in ast.walk(tree):  # and raw SQL text
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = RAW_WRITE.search(node.value)
            if match:
                found.append((node.lineno, TABLE_NAMES[match.group(1).lower()]))
    return found


def test_the_outbox_is_the_only_writer_of_its_tables() -> None:
    """Messages, bodies, events and suppressions are written in bulkmail_kernel/outbox only."""
    strays = []
    for path in _modules():
        stage = path.relative_to(PACKAGE).parts[0]
        if stage == "outbox":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, table in _guarded_writes(tree):
            if (stage, table) not in OTHER_WRITERS:
                strays.append(f"{path.relative_to(ROOT)}:{line} writes {table}")
    assert not strays, "ask the outbox instead:\n" + "\n".join(strays)


def test_the_writer_check_sees_the_ways_code_writes() -> None:
    """The check above must catch each form, or a green run proves nothing."""
    source = """
import sqlalchemy as sa
_M = cast(sa.Table, Message.__table__)
def f(conn, s):
    conn.execute(sa.insert(Event), rows)
    conn.execute(_M.update().values(status="sent"))
    s.add(Suppression(channel="email"))
    conn.execute(sa.delete(MessageBody).where(MessageBody.id == 1))
    conn.execute(sa.select(Message.id))  # a read: fine
    conn.execute(sa.text("UPDATE messages SET status = 'sent'"))
"""
    assert sorted(t for _, t in _guarded_writes(ast.parse(source))) == [
        "Event",
        "Message",
        "Message",
        "MessageBody",
        "Suppression",
    ]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {name.partition(".")[0] for name in out.split()}


HEAVY = {"ipywidgets", "starlette", "uvicorn", "aiosmtpd", "pandas", "sqlalchemy", "jinja2"}


def test_importing_the_package_loads_no_heavy_stack() -> None:
    assert not _loaded_after("import bulkmail_kernel") & HEAVY


def test_a_public_name_loads_only_its_own_stack() -> None:
    loaded = _loaded_after("import bulkmail_kernel as bm\nbm.contacts_frame")
    assert {"pandas", "sqlalchemy"} <= loaded  # what the recipients frame needs
    assert not loaded & {"ipywidgets", "starlette", "uvicorn", "aiosmtpd"}
