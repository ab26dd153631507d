"""The command line does what the Python API does, with the same words, from a shell script."""

from __future__ import annotations

import argparse
import ast
import csv
import email
import email.policy
import inspect
import io
import json
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook

import bulkmail_kernel
from bulkmail_kernel import FilterSpec, Sink, contacts_frame, save_segment
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli import build_parser, main

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_demo_import_segment_export_round_trip(
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["demo", "--contacts", "200", "--today", "2026-11-23", "--db", sqlite_url]) == 0
    assert "contacts" in capsys.readouterr().out
    # A dirty file is refused whole (exit 1) with its report, then imported with --on-error skip.
    report = tmp_path / "report.csv"
    args = ["import", str(SAMPLES / "clients_cp1250.csv"), "--db", sqlite_url]
    assert main([*args, "--report", str(report)]) == 1
    assert "rejected" in report.read_text(encoding="utf-8-sig")
    assert main([*args, "--on-error", "skip"]) == 0
    frame = contacts_frame(url=sqlite_url)
    assert {"K100", "K101"} <= set(frame["external_id"].dropna())
    save_segment("opted-in", FilterSpec(mailing_allowed=True), frame, url=sqlite_url)
    out = tmp_path / "x.xlsx"
    cols = "first_name,last_name,language"
    assert main(["export", "opted-in", str(out), "--columns", cols, "--db", sqlite_url]) == 0
    header = next(load_workbook(out).active.iter_rows(values_only=True))
    assert list(header) == ["first_name", "last_name", "language"]
    # A bare name in a shell means the current folder; no path means data/exports/.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BULKMAIL_DATA_DIR", str(tmp_path / "data"))
    assert main(["export", "opted-in", "here.csv", "--columns", cols, "--db", sqlite_url]) == 0
    assert (tmp_path / "here.csv").exists()
    assert main(["export", "opted-in", "--columns", cols, "--db", sqlite_url]) == 0
    written = capsys.readouterr().out.strip().splitlines()[-1].split(" written to ")[-1]
    assert Path(written).parent == tmp_path / "data" / "exports"
    assert Path(written).exists()
    # Asking for addresses without the flag is refused with the reason.
    capsys.readouterr()
    args = ["export", "opted-in", str(out), "--columns", "address", "--db", sqlite_url]
    assert main(args) == 2
    assert "include_contact_data" in capsys.readouterr().err.replace("-", "_")
    dbmod.close_all()


def test_sendpulse_account_with_a_wrong_secret_is_refused(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes.sendpulse_fake import running_sendpulse

    monkeypatch.setenv("SP_SECRET", "not-the-secret")
    with running_sendpulse() as fake:
        code = main([
            "sendpulse-account", "sp", "--client-id", "sp-client-id", "--secret-env",
            "SP_SECRET", "--from-email", "news@shop.sk", "--base-url", fake.base_url,
            "--db", sqlite_url,
        ])  # fmt: skip
    assert code == 2
    assert "Client authentication failed" in capsys.readouterr().err
    from bulkmail_kernel.db import SenderAccount, open_database

    with open_database(sqlite_url).session() as s:
        assert s.scalars(sa.select(SenderAccount)).all() == []


# --------------------------------------------------------------------------- the mirror of the API

#: Public functions with no command, and why: each takes or returns a Python object that a
#: command line cannot carry, or is a notebook panel. Every other function of ``__all__``
#: must be ``bulkmail <its name with - for _>``.
NO_COMMAND = {
    "frame_csv": "what every command's --csv prints through (checked and logged as an export)",
    # Notebook panels (ipywidgets) and a chart: they are displayed in a cell.
    "segment_builder": "a notebook widget",
    "preview": "a notebook widget",
    "outbox_monitor": "a notebook widget; campaign-progress prints what it shows",
    "send_in_background": "a thread of the notebook's kernel; run-worker is the shell's",
    "plot_timeline": "a matplotlib chart; campaign-timeline prints its numbers",
    "plot_plan": "a matplotlib chart; send-plan prints its numbers",
    "plan_per_hour": "a plan (DataFrame) in; send-plan prints it",
    # Objects and bytes in, objects and bytes out.
    "build_mime": "RenderedMessage in, bytes out",
    "render": "Template and one row in, RenderedMessage out; check-template renders them all",
    "preview_warnings": "RenderedMessage in; check-template is the command-line check",
    "sign_message": "message bytes and key bytes in",
    "parse_bounce": "message bytes in; process-mailbox reads the mailbox",
    "classify_message": "message bytes in; process-mailbox reads the mailbox",
    "filter_recipients": "a frame and a FilterSpec in; save-segment and segment-recipients filter",
    "explain_segment": "a frame and a FilterSpec in; explain judges a campaign's filter",
    "readable": "a DataFrame in, the same DataFrame shown readably out; commands print so",
    "template_from_html": "pasted HTML in, a Template object out; on disk a template is a folder",
    "create_unsubscribe_app": "returns an ASGI app; unsubscribe-server serves it",
    # The process-wide database of a notebook; each command is its own process: --db says it.
    "connect": "a notebook's default database; a command takes --db or BULKMAIL_DB_URL",
    # Text helpers of the composing cell; register --fit-to-gsm7 applies the rewrite.
    "fit_to_gsm7": "a text helper of the composing cell",
    "sms_cost": "a text helper of the composing cell",
    "sms_fit_preview": "a text helper of the composing cell",
    "sms_segments": "a text helper of the composing cell",
    # A/B tests: the worker's step runs in run-worker; the widget is displayed in a cell.
    "ab_test_step": "a step of the worker's pass; run-worker runs it",
    "ab_test_widget": "a notebook widget; ab-report prints what it shows",
}

#: A required parameter the command fills itself, and the words its help must say instead.
FILLED_BY_THE_COMMAND = {
    # A DataFrame cannot be typed: the command reads the database's contacts.
    "frame": "contacts-frame",
}


def _exe() -> str:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe, "the bulkmail console script is not installed next to this Python"
    return exe


def _bulkmail(*args: str) -> str:
    """Run the installed ``bulkmail`` as a shell script would; return its stdout."""
    proc = subprocess.run([_exe(), *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"bulkmail {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _public_functions() -> dict[str, Any]:
    return {
        name: obj
        for name in bulkmail_kernel.__all__
        if inspect.isfunction(obj := getattr(bulkmail_kernel, name))
    }


def test_every_public_function_has_its_command_and_help() -> None:
    functions = _public_functions()
    assert set(NO_COMMAND) <= set(functions), "NO_COMMAND names a function that is gone"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, func in sorted(functions.items()):
        command = name.replace("_", "-")
        if name in NO_COMMAND:
            assert command not in sub.choices, f"{command} exists: take {name} off NO_COMMAND"
            continue
        assert command in sub.choices, f"{name} has no command `bulkmail {command}`"
        help_text = _bulkmail(command, "--help")
        # argparse wraps long lines, at hyphens too: join the pieces again.
        flat = re.sub(r"-\s+", "-", " ".join(help_text.split()))
        assert "--db" in flat or "url" not in inspect.signature(func).parameters
        for param in inspect.signature(func).parameters.values():
            if param.default is not param.empty or param.kind in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ):
                continue
            option = "--" + param.name.replace("_", "-")
            if param.name in FILLED_BY_THE_COMMAND:
                wanted = [FILLED_BY_THE_COMMAND[param.name]]
            elif param.kind is param.KEYWORD_ONLY:
                wanted = [option]
            else:
                wanted = [param.name, option]
            assert any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", flat) for w in wanted), (
                f"bulkmail {command} --help does not mention {param.name} (as {wanted})"
            )


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_old_names_take_the_same_options(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    old = {a.dest: a.help for a in sub._choices_actions if a.help.startswith("old name of ")}
    assert {"import", "demo", "bounces", "sms-dlr", "sink", "templates", "export", "worker",
            "report", "migrate", "sendpulse-account", "sendpulse-send", "eurosms-account",
            "dkim-keygen"} <= set(old)  # fmt: skip
    listing = re.compile(r"^(positional arguments|options):$", re.M)
    for alias, text in old.items():
        name = text.removeprefix("old name of ")
        # The arguments and options, listed after the description, are the same.
        was, now = _help(alias, capsys), _help(name, capsys)
        assert was[listing.search(was).start() :] == now[listing.search(now).start() :], alias


def test_the_commands_use_only_the_public_api() -> None:
    """The stages may move: the CLI imports names of the package, never its modules."""
    allowed_modules = {
        "bulkmail_kernel.cli",
        "bulkmail_kernel.cli.common",
        "bulkmail_kernel.config",
        "bulkmail_kernel.exceptions",
    }
    # open-database prints the revision; lab assembles the workbench, it is no API function.
    allowed_names = {
        ("bulkmail_kernel.db", "current_revision"),
        ("bulkmail_kernel.db", "Contact"),
        ("bulkmail_kernel.servers.web", "start_in_background"),
    }
    public = set(bulkmail_kernel.__all__) | {"config"}
    folder = Path(bulkmail_kernel.__file__).parent / "cli"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                inner = [a.name for a in node.names if a.name.startswith("bulkmail_kernel")]
                assert not inner, f"{path.name}: import {inner}"
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "bulkmail_kernel"
            ):
                continue
            for alias in node.names:
                if node.module == "bulkmail_kernel":
                    ok = alias.name in public
                else:
                    ok = (
                        node.module in allowed_modules or (node.module, alias.name) in allowed_names
                    )
                assert ok, f"{path.name}: from {node.module} import {alias.name}"


def _sink_settings(port: int) -> str:
    return json.dumps({
        "host": "127.0.0.1", "port": port, "security": "none",
        "unsubscribe_url": "https://shop.sk/u?t={token}",
    })  # fmt: skip


INVITATION = [
    "--template", "invitation_sk",
    "--value", "company_name=Školiace centrum", "--value", "event_name=Excel",
    "--value", "event_date=2026-12-01", "--value", "event_place=Hlavná 12, Bratislava",
    "--value", "registration_url=https://shop.sk/registracia",
]  # fmt: skip


def _campaign_from_the_shell(db: str, port: int) -> None:
    """Demo contacts, a segment, an smtp account on ``port`` and a registered campaign 'jar'."""
    _bulkmail(
        "generate-demo",
        "--contacts",
        "25",
        "--today",
        "2026-11-23",
        "--no-samples",
        "--quiet",
        "--db",
        db,
    )
    _bulkmail(
        "save-segment",
        "optin",
        "--spec",
        '{"mailing_allowed": true, "channel": "email"}',
        "--db",
        db,
    )
    out = _bulkmail(
        "add-sender-account",
        "shop",
        "--kind",
        "smtp",
        "--from-email",
        "news@shop.sk",
        "--from-name",
        "Obchod",
        "--settings",
        _sink_settings(port),
        "--no-check",  # some tests point it at a server that breaks every connection
        "--db",
        db,
    )
    assert "kind='smtp'" in out
    out = _bulkmail(
        "create-campaign",
        "jar",
        "--sender",
        "shop",
        "--segment",
        "optin",
        *INVITATION,
        "--rate-per-hour",
        "360000",
        "--burst",
        "50",
        "--db",
        db,
    )
    assert "status='draft'" in out
    out = _bulkmail("register", "jar", "--db", db)
    assert re.search(r"^\d+ messages in the queue of 'jar'$", out, re.M), out


@pytest.mark.slow
def test_a_whole_campaign_runs_from_the_shell(sqlite_url: str, sink: Sink) -> None:
    _campaign_from_the_shell(sqlite_url, sink.port)
    queued = _csv(_bulkmail("queue", "jar", "--status", "queued", "--csv", "--db", sqlite_url))
    assert len(queued) >= 10
    out = _bulkmail("test-send", "jar", "--to", "test@shop.sk", "--csv", "--db", sqlite_url)
    assert [(r["to"], r["status"]) for r in _csv(out)] == [("test@shop.sk", "sent")]
    removed = queued[0]
    out = _bulkmail("remove-from-queue", "jar", removed["message_id"], "--db", sqlite_url)
    assert out.strip() == "1 messages removed from the queue of 'jar'"
    out = _bulkmail("send", "jar", "--quiet", "--db", sqlite_url)
    assert f"sent={len(queued) - 1}," in out
    assert "status='finished'" in out
    report = _csv(_bulkmail("campaign-report", "jar", "--csv", "--db", sqlite_url))
    counts = {r["status"]: int(r["messages"]) for r in report}
    assert (counts["sent"], counts["removed"], counts["queued"]) == (len(queued) - 1, 1, 0)
    # What reached the server: the test copy and every queued message but the removed one.
    emls = sorted(sink.folder.glob("*.eml"))
    assert len(emls) == len(queued)
    parsed = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in emls]
    tests = [m for m in parsed if str(m["Subject"]).startswith("[TEST] ")]
    assert [m["To"].addresses[0].addr_spec for m in tests] == ["test@shop.sk"]
    delivered = sorted(m["To"].addresses[0].addr_spec for m in parsed if m not in tests)
    assert delivered == sorted(r["recipient"] for r in queued if r is not removed)
    assert removed["recipient"] not in delivered
    assert {str(m["Message-ID"]) for m in parsed if m not in tests} == {
        r["message_id_header"] for r in queued if r is not removed
    }
    # The database agrees, message by message.
    final = {
        r["message_id"]: r["status"]
        for r in _csv(_bulkmail("queue", "jar", "--csv", "--db", sqlite_url))
    }
    assert final.pop(removed["message_id"]) == "removed"
    assert set(final.values()) == {"sent"}
    assert "removed by the analyst" in _bulkmail("campaign-failures", "jar", "--db", sqlite_url)


class _DropAfterContent(socketserver.StreamRequestHandler):
    """An SMTP server that takes the message and hangs up before saying whether it took it."""

    def handle(self) -> None:
        self.wfile.write(b"220 drop.test ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 drop.test\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                return  # the content arrived; the answer never comes
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.mark.slow
def test_unknown_messages_are_requeued_from_the_shell(sqlite_url: str, sink: Sink) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DropAfterContent)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _campaign_from_the_shell(sqlite_url, server.server_address[1])
        out = _bulkmail("send", "jar", "--quiet", "--db", sqlite_url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    # Every connection broke after the content: nobody knows whether those messages arrived.
    unknown = _csv(_bulkmail("unknown-messages", "jar", "--csv", "--db", sqlite_url))
    assert len(unknown) >= 10
    assert f"unknown={len(unknown)}," in out
    assert {r["status"] for r in unknown} == {"unknown"}
    # Neither ids nor --status: refused in one line.
    proc = subprocess.run(
        [_exe(), "requeue", "jar", "--db", sqlite_url], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bulkmail requeue: give message ids or --status, not both and not neither"
    )
    # The analyst checked: they did not arrive. The account now points at a working server.
    _bulkmail(
        "add-sender-account",
        "shop",
        "--kind",
        "smtp",
        "--from-email",
        "news@shop.sk",
        "--settings",
        _sink_settings(sink.port),
        "--db",
        sqlite_url,
    )
    first = unknown[0]
    out = _bulkmail("requeue", "jar", first["message_id"], "--db", sqlite_url)
    assert out.strip() == "1 messages queued again in 'jar'"
    assert len(_csv(_bulkmail("unknown-messages", "jar", "--csv", "--db", sqlite_url))) == (
        len(unknown) - 1
    )
    assert "sent=1," in _bulkmail("send", "jar", "--quiet", "--db", sqlite_url)
    assert [m.rcpt_tos for m in sink.messages] == [(first["recipient"],)]
    assert sink.messages[0].message_id == first["message_id_header"]  # the same message again
    # A sent message is no longer unknown: requeueing it does nothing.
    out = _bulkmail("requeue", "jar", first["message_id"], "--db", sqlite_url)
    assert out.strip() == "0 messages queued again in 'jar'"
    out = _bulkmail("requeue", "jar", "--status", "unknown", "--db", sqlite_url)
    assert out.strip() == f"{len(unknown) - 1} messages queued again in 'jar'"
    assert f"sent={len(unknown) - 1}," in _bulkmail("send", "jar", "--quiet", "--db", sqlite_url)
    received = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert received == sorted(r["recipient"] for r in unknown)  # each exactly once
    report = _csv(_bulkmail("campaign-report", "jar", "--csv", "--db", sqlite_url))
    assert {r["status"]: int(r["messages"]) for r in report}["sent"] == len(unknown)
