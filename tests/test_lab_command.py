"""README command #1: `bulkmail lab` makes the demo database, starts the sink, a worker and Lab."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from process_support import live_in_group, stop
from sending_support import make_campaign

from bulkmail_kernel import db as dbmod
from bulkmail_kernel import live_workers
from bulkmail_kernel.servers.sink import free_port

pytestmark = pytest.mark.slow


def test_bulkmail_lab_starts_everything_on_a_fresh_data_dir(tmp_path: Path) -> None:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe, "the bulkmail console script is not installed next to this Python"
    data = tmp_path / "data"
    lab_port, sink_port, unsub_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "BULKMAIL_DATA_DIR": str(data),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_TOKEN": "lab-test",
    }
    env.pop("BULKMAIL_DB_URL", None)
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
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
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                url = f"http://127.0.0.1:{lab_port}/api/status?token=lab-test"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    assert resp.status == 200
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
                time.sleep(0.5)
        # No pop-up asking about Jupyter news on start: the page tells the front end so.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{lab_port}/lab?token=lab-test", timeout=10
        ) as resp:
            page = resp.read().decode()
        config_json = page.split('id="jupyter-config-data"', 1)[1].split(">", 1)[1]
        page_config = json.loads(config_json.split("</script>", 1)[0])
        assert page_config["news"] == {"disabled": True}
        # Notebooks keep their widgets' state when saved: reopened, their progress bars show
        # as they ended, not "Error displaying widget: model not found".
        widgets_url = "/lab/api/settings/@jupyter-widgets/jupyterlab-manager:plugin"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{lab_port}{widgets_url}?token=lab-test", timeout=10
        ) as resp:
            schema = json.loads(resp.read())["schema"]  # the default, with overrides applied
        assert schema["properties"]["saveState"]["default"] is True
        # Nor the question whether to fetch Jupyter news: the analyst is not asked.
        notes_url = "/lab/api/settings/@jupyterlab/apputils-extension:notification"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{lab_port}{notes_url}?token=lab-test", timeout=10
        ) as resp:
            schema = json.loads(resp.read())["schema"]
        assert schema["properties"]["fetchNews"]["default"] == "false"
        # The demo database exists and is filled; its sender account points at the sink.
        engine = sa.create_engine(f"sqlite:///{data / 'bulkmail.db'}")
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from contacts")).scalar() == 5000
        engine.dispose()
        with smtplib.SMTP("127.0.0.1", sink_port, timeout=10) as smtp:
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
        assert list((data / "sink").glob("*.eml"))
        # A worker runs on the same database, its log in data/worker.log, and it sends a
        # campaign that comes due into the lab's sink.
        out = (tmp_path / "lab.log").read_text()
        assert f"its log is {data / 'worker.log'}" in out
        db_url = f"sqlite:///{data / 'bulkmail.db'}"
        database = dbmod.open_database(db_url)
        deadline = time.monotonic() + 60
        while not live_workers(db=database)["runs_worker"].any():
            assert time.monotonic() < deadline, (data / "worker.log").read_text()
            time.sleep(0.5)
        make_campaign(database, 3, name="due now", sender="demo", status="scheduled")
        while len(list((data / "sink").glob("*.eml"))) < 4:
            assert time.monotonic() < deadline + 60, (data / "worker.log").read_text()
            time.sleep(0.5)
        assert "started" in (data / "worker.log").read_text()
        dbmod.close_all()
        # The demo's unsubscribe links have an endpoint: unknown tokens get the neutral 404.
        token_url = f"http://127.0.0.1:{unsub_port}/u/{'x' * 32}"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(token_url, timeout=5)
        answer.value.close()  # an HTTPError holds the open response
        assert answer.value.code == 404
        # SIGTERM to the lab alone (as docker stop sends it to PID 1) stops it cleanly:
        # it stops JupyterLab and waits for it, so nothing of its process group is left.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "lab.log").read_text()
        assert live_in_group(proc.pid) == [], (tmp_path / "lab.log").read_text()
        assert "worker stopped (exit" in (tmp_path / "lab.log").read_text()
        assert len(list((data / "sink").glob("*.eml"))) == 4  # each of the three once
    finally:
        stop(proc, group=True)
        log.close()


def test_lab_starts_no_second_worker_on_a_database_that_has_one(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from bulkmail_kernel.cli.servers import _start_worker
    from bulkmail_kernel.db import Worker, utcnow

    database = dbmod.open_database(sqlite_url)
    now = utcnow()
    with database.session() as s:  # a worker on another machine, beating
        s.add(Worker(id="far:7:x", hostname="far", pid=7, started_at=now, heartbeat_at=now))
    args = argparse.Namespace(db=sqlite_url, another_worker=False)
    assert _start_worker(args) is None
    out = capsys.readouterr().out
    assert "a worker already runs on this database (far:7:x" in out
    assert "--another-worker" in out


def test_ctrl_c_stops_the_lab_and_its_worker(tmp_path: Path) -> None:
    exe = shutil.which("bulkmail", path=str(Path(sys.executable).parent))
    assert exe
    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # --db: the worker follows it
    from bulkmail_kernel.demo.generate import generate_demo

    generate_demo(50, url=db_url, progress=False, samples_dir=None)
    dbmod.close_all()
    lab_port = free_port()
    env = {
        **os.environ,
        "BULKMAIL_DATA_DIR": str(data),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_TOKEN": "lab-test",
    }
    env.pop("BULKMAIL_DB_URL", None)
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            "lab",
            "--no-browser",
            "--no-sink",
            "--no-unsubscribe-server",
            f"--port={lab_port}",
            f"--db={db_url}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        database = dbmod.open_database(db_url)
        deadline = time.monotonic() + 120
        while not live_workers(db=database)["runs_worker"].any():
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
            time.sleep(0.5)
        dbmod.close_all()
        # Ctrl-C in the lab's terminal (to the lab alone here): everything stops, reaped.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, (tmp_path / "lab.log").read_text()
        out = (tmp_path / "lab.log").read_text()
        assert "worker stopped (exit" in out
        assert live_in_group(proc.pid) == [], out
        assert (data / "worker.log").read_text().strip()
    finally:
        stop(proc, group=True)
        log.close()
        dbmod.close_all()


def test_lab_settings_keep_the_installations_and_add_the_widget_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkmail_kernel.cli.servers import lab_settings_dir

    prefix = tmp_path / "prefix"
    installed = prefix / "share" / "jupyter" / "lab" / "settings"
    installed.mkdir(parents=True)
    (installed / "page_config.json").write_text('{"disabledExtensions": ["x"]}')
    monkeypatch.setattr(sys, "prefix", str(prefix))
    folder = lab_settings_dir()
    assert folder == tmp_path / "data" / "lab-settings"
    assert json.loads((folder / "page_config.json").read_text()) == {"disabledExtensions": ["x"]}
    ours = json.loads((folder / "overrides.d" / "bulkmail.json").read_text())
    assert ours["@jupyter-widgets/jupyterlab-manager:plugin"] == {"saveState": True}
    assert ours["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert lab_settings_dir() == folder  # a second start writes the same again
