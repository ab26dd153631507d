"""JupyterLab in a real browser: open the compose notebook, run it, look at the preview."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_support import open_and_run_all
from process_support import stop

from bulkmail_kernel import db as dbmod
from bulkmail_kernel.cli.servers import lab_settings_dir
from bulkmail_kernel.compose.checks import PREVIEW_UNSUBSCRIBE_URL
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.demo.generate import generate_demo
from bulkmail_kernel.segments.filters import filter_recipients
from bulkmail_kernel.segments.spec import FilterSpec
from bulkmail_kernel.servers.sink import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _need_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright for Python (pip install -e '.[test]')")
    if missing:
        message = "JupyterLab browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must install it (.ci/run)")
        pytest.skip(message)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """Start JupyterLab on a copy of notebooks/ and a fresh demo database."""
    _need_browser()
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    generate_demo(300, url=url, progress=False, samples_dir=None)
    dbmod.close_all()
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)  # Lab saves into this copy, never into the repo
    port, token = free_port(), "e2e-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "BULKMAIL_DB_URL": url,
        "BULKMAIL_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            # As bulkmail lab starts it: widget state saved, no news question over the page.
            f"--LabApp.app_settings_dir={lab_settings_dir(tmp_path / 'lab-settings')}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI machines run as root
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start: " + (tmp_path / "lab.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield base, tmp_path, token
    finally:
        stop(proc, 20)  # JupyterLab shuts its kernels down on SIGTERM
        log.close()
        dbmod.close_all()


def test_compose_notebook_previews_in_jupyterlab(lab: tuple[str, Path, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, tmp_path, token = lab
    frame = contacts_frame(
        url=os.environ.get("BULKMAIL_DB_URL") or f"sqlite:///{tmp_path / 'demo.db'}"
    )
    first = filter_recipients(
        frame, FilterSpec(channel="email", mailing_allowed=True, language=["sk"])
    ).iloc[0]
    dbmod.close_all()
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
        page = open_and_run_all(browser, f"{base}/lab/tree/03_compose_preview.ipynb?token={token}")

        preview = page.locator(".jp-OutputArea-output .bm-preview")
        expect(preview).to_be_visible()
        body = page.frame_locator(".bm-preview-body iframe")
        expect(body.locator("body")).to_contain_text(first["last_name"])
        iframe = page.locator(".bm-preview-body iframe")
        # The frame grows to its message: the whole e-mail, footer included, without
        # scrolling inside it (the page's onload handler runs in JupyterLab's output).
        page.wait_for_function(
            "() => { const f = document.querySelector('.bm-preview-body iframe');"
            " const d = f && f.contentDocument && f.contentDocument.documentElement;"
            " return d && d.querySelector('body *') && f.style.height !== '640px'"
            " && d.scrollHeight <= f.clientHeight; }"
        )
        unsubscribe = body.locator(f"a[href='{PREVIEW_UNSUBSCRIBE_URL}']").last
        expect(unsubscribe).to_be_in_viewport()
        desktop_width = iframe.bounding_box()["width"]
        page.screenshot(path=str(tmp_path / "preview-desktop.png"), full_page=True)

        preview.locator("button:has-text('Mobile')").click()
        page.wait_for_function(
            "() => document.querySelector('.bm-preview-body iframe')"
            ".getBoundingClientRect().width < 400"
        )
        mobile_width = iframe.bounding_box()["width"]
        expect(body.locator("body")).to_contain_text(first["last_name"])
        page.screenshot(path=str(tmp_path / "preview-mobile.png"), full_page=True)
        browser.close()

    assert desktop_width > 600
    assert mobile_width < 400
    for name in ("preview-desktop.png", "preview-mobile.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        shutil.copy(tmp_path / name, shots / name)
