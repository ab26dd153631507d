"""The real `bulkmail lab` in Chromium: notebook 04's scheduled campaign is sent by its worker.

Nothing but `bulkmail lab` runs: it creates a fresh demo database, the sink, the worker
and JupyterLab. The notebook schedules its reminder a few seconds ahead in local time;
the monitor widget in the page shows it scheduled, then sent to the end by the worker
(the worker's id is on every sent event, and it is not the notebook kernel's process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from lab_support import open_and_run_all
from process_support import stop
from test_e2e_lab import CHROMIUM, _need_browser

from bulkmail_kernel.servers.sink import free_port

ROOT = Path(__file__).resolve().parents[1]
REMINDER = "Pozvánka na školenie Excel (pripomienka)"
#: The notebook's parameters in the browser: small, fast, and the reminder due in 40 s (time
#: enough for "Run All" to show it scheduled on a busy machine, short for a test).
PARAMS = {"RECIPIENTS": 6, "RATE_PER_HOUR": 360_000, "SCHEDULE_IN_S": 40}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _with_params(source: Path, target: Path) -> None:
    """Copy notebook 04 with its parameter cell set to PARAMS (what papermill would inject)."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    text = "".join(cell["source"])
    for name, value in PARAMS.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.M)
        assert n == 1, f"notebook 04 has no parameter {name}"
    cell["source"] = text
    target.write_text(json.dumps(nb, ensure_ascii=False, indent=1), encoding="utf-8")


@pytest.fixture
def bulkmail_lab(tmp_path: Path) -> Iterator[tuple[str, Path, str, subprocess.Popen[bytes]]]:
    """Start `bulkmail lab` on a fresh data folder and a copy of notebook 04."""
    _need_browser()
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    _with_params(ROOT / "notebooks" / "04_send.ipynb", home / "notebooks" / "04_send.ipynb")
    data = tmp_path / "data"
    lab_port, sink_port, unsub_port = free_port(), free_port(), free_port()
    token = "e2e-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "BULKMAIL_HOME": str(home),  # Lab opens home/notebooks: the repo's copy stays untouched
        "BULKMAIL_TEMPLATES_DIR": str(ROOT / "templates"),
        "BULKMAIL_DATA_DIR": str(data),
        "PYTHONPATH": str(ROOT),
        "JUPYTER_TOKEN": token,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    env.pop("BULKMAIL_DB_URL", None)
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bulkmail_kernel.cli",
            "lab",
            "--no-browser",
            f"--port={lab_port}",
            f"--sink-port={sink_port}",
            f"--unsubscribe-port={unsub_port}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{lab_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "bulkmail lab did not start: " + (tmp_path / "lab.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield base, tmp_path, token, proc
    finally:
        stop(proc, 60, group=True)  # SIGTERM: the lab stops JupyterLab, the worker, the sink
        log.close()


def test_the_lab_worker_sends_the_scheduled_campaign_and_the_monitor_shows_it(
    bulkmail_lab: tuple[str, Path, str, subprocess.Popen[bytes]],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, tmp_path, token, _lab = bulkmail_lab
    data = tmp_path / "data"
    lab_out = (tmp_path / "lab.log").read_text()
    started = re.search(r"worker running \(pid (\d+)\)", lab_out)
    assert started, lab_out
    worker_pid = int(started.group(1))
    shots = ROOT / "test-output" / "e2e"
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = open_and_run_all(browser, f"{base}/lab/tree/04_send.ipynb?token={token}")

        # Two monitors: the background send's campaign, then the scheduled reminder.
        monitors = page.locator(".jp-OutputArea-output .bm-monitor")
        expect(monitors).to_have_count(2)
        reminder = monitors.nth(1)
        rate = reminder.locator(".bm-monitor-rate")
        expect(rate).to_contain_text(REMINDER)
        # Due in 40 s: right after the run it waits, nothing sent.
        expect(rate).to_contain_text("— scheduled")
        expect(reminder.locator(".bm-monitor-progress")).to_contain_text("0 / 6")
        expect(rate).to_contain_text("due in")
        expect(rate).not_to_contain_text("no worker is running")  # the lab's worker is there
        reminder.screenshot(path=str(tmp_path / "monitor-scheduled.png"))
        # Then the worker sends it, and the monitor shows it to the end.
        expect(rate).to_contain_text("— finished", timeout=120_000)
        expect(reminder.locator(".bm-monitor-progress")).to_contain_text("6 / 6")
        expect(reminder.locator(".bm-monitor-counts")).to_be_visible()
        reminder.screenshot(path=str(tmp_path / "monitor-finished.png"))
        # The notebook's last cell printed where things are, times in the local zone.
        expect(page.locator(".jp-OutputArea-output").last).to_contain_text("(pripomienka)")
        browser.close()

    # The worker sent every message of the reminder, no earlier than it was due.
    engine = sa.create_engine(f"sqlite:///{data / 'bulkmail.db'}")
    with engine.connect() as conn:
        cid, due = conn.execute(
            sa.text("SELECT id, scheduled_at FROM campaigns WHERE name = :n"), {"n": REMINDER}
        ).one()
        sent = conn.execute(
            sa.text(
                "SELECT json_extract(e.data, '$.worker'), m.sent_at FROM events e "
                "JOIN messages m ON m.id = e.message_id "
                "WHERE e.campaign_id = :c AND e.kind = 'sent'"
            ),
            {"c": cid},
        ).all()
    engine.dispose()
    assert len(sent) == 6
    workers = {w for w, _at in sent}
    assert len(workers) == 1
    assert workers.pop().split(":")[1] == str(worker_pid), "sent by someone else than the worker"
    assert min(datetime.fromisoformat(str(at)) for _w, at in sent) >= datetime.fromisoformat(
        str(due)
    )
    assert (data / "worker.log").read_text().strip(), "the worker wrote no log"
    # Every message sent (the first campaign's 5, the reminder's 6) reached the lab's sink once.
    assert len(list((data / "sink").glob("*.eml"))) == 5 + 6
    for name in ("monitor-scheduled.png", "monitor-finished.png"):
        shutil.copy(tmp_path / name, shots / name)
