"""JupyterLab in a real browser: press the preview's "Send a test"; the message reaches the sink."""

from __future__ import annotations

import email
import email.policy

import nbformat
import pytest
from lab_support import open_and_run_all
from test_e2e_lab import CHROMIUM
from test_e2e_lab import lab as lab  # the fixture: JupyterLab on a fresh demo database

import bulkmail_kernel as bm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.servers.sink import Sink

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TESTERS = ["me@test.sk", "boss@test.sk"]
CELL = """\
import bulkmail_kernel as bm
people = bm.filter_recipients(
    bm.contacts_frame(), bm.FilterSpec(channel="email", mailing_allowed=True, language=["sk"])
)
bm.preview(campaign="tsend", frame=people.head(3))
"""


def test_the_test_send_button_sends_to_the_sink(lab: tuple[str, object, str], sink: Sink) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, tmp_path, token = lab
    url = f"sqlite:///{tmp_path}/demo.db"
    bm.add_sender_account(
        "sinktest",
        kind="smtp",
        from_email="news@shop.sk",
        settings={
            "host": "127.0.0.1",
            "port": sink.port,
            "security": "none",
            "unsubscribe_url": "https://shop.sk/u?t={token}",
            "test_addresses": TESTERS,
        },
        url=url,
        check=False,
    )
    template = bm.load_template("invitation_sk")
    bm.create_campaign(
        "tsend", sender="sinktest", template=template, values=dict(template.sample), url=url
    )
    dbmod.close_all()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, str(tmp_path / "notebooks" / "test_send.ipynb"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = open_and_run_all(browser, f"{base}/lab/tree/test_send.ipynb?token={token}")
        panel = page.locator(".jp-OutputArea-output .bm-preview")
        expect(panel).to_be_visible()
        panel.locator(".bm-preview-test-send").click()
        result = panel.locator(".bm-test-send-result")
        expect(result).to_contain_text("[TEST]")
        for address in TESTERS:
            expect(result.locator("tr", has_text=address)).to_contain_text("sent")
        page.screenshot(path=str(tmp_path / "preview-test-send.png"), full_page=True)
        browser.close()

    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(TESTERS)
    sent = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
    assert str(sent["Subject"]).startswith("[TEST] ")
