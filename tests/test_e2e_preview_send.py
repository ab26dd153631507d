"""JupyterLab in a real browser, as an analyst works: build a segment from rules, open a saved
group, preview it and press "Send a test"; the message reaches the sink."""

from __future__ import annotations

import email
import email.policy
import re

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
SAVED = "Slovak women"
SAVED_SPEC = bm.FilterSpec(channel="email", language=["sk"], gender=["f"])
BUILDER_CELL = """\
import bulkmail_kernel as bm
builder = bm.segment_builder(bm.contacts_frame())
builder.widget
"""
PREVIEW_CELL = f"""\
people = bm.segment_recipients({SAVED!r}, bm.contacts_frame())
bm.preview(campaign="tsend", frame=people.head(3))
"""


def _count(text: str) -> int:
    match = re.search(r"([\d,]+) recipients", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def test_rule_builder_saved_group_and_test_send_in_the_browser(
    lab: tuple[str, object, str], sink: Sink
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, tmp_path, token = lab
    url = f"sqlite:///{tmp_path}/demo.db"
    frame = bm.contacts_frame(url=url)
    every = len(bm.filter_recipients(frame, bm.FilterSpec()))
    saved = bm.save_segment(SAVED, SAVED_SPEC, frame, url=url)
    assert 0 < saved.members < every
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
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(BUILDER_CELL), nbformat.v4.new_code_cell(PREVIEW_CELL)]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, str(tmp_path / "notebooks" / "analyst.ipynb"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = open_and_run_all(browser, f"{base}/lab/tree/analyst.ipynb?token={token}")
        panel = page.locator(".jp-OutputArea-output .bm-segments")
        count = panel.locator(".bm-segment-count")
        expect(count).to_contain_text(f"{every:,} recipients")

        def changed_from(n: int) -> int:
            expect(count).not_to_have_text(re.compile(rf"^\s*{n:,} recipients"))
            return _count(count.inner_text())

        # Add a rule: it starts as "Registered · is in the last … days · 30"; the count drops.
        panel.locator(".bm-add-rule").click()
        expect(panel.locator(".bm-rule")).to_have_count(1)
        last_30 = changed_from(every)
        assert last_30 < every
        days = panel.locator(".bm-rule").first.locator("input[type=number]")
        days.fill("400")
        days.press("Tab")
        recent = changed_from(last_30)
        assert last_30 < recent < every
        # A second rule on the language, chosen from the menu and typed into the picker.
        panel.locator(".bm-add-rule").click()
        second = panel.locator(".bm-rule").nth(1)
        second.locator("select").first.select_option(label="Language")
        expect(second.locator("select").nth(1)).to_have_value("is one of")
        picker = second.locator("input.jupyter-widget-taginput")
        # Typed (filled) and committed by leaving the box, as the picker takes a choice.
        picker.fill("sk")
        picker.press("Tab")
        expect(second.locator("div.jupyter-widget-tag")).to_have_text("sk")
        both = changed_from(recent)
        assert 0 < both < recent
        # Switch AND to OR: everyone registered lately or Slovak-speaking, so more.
        panel.locator(".bm-rules-match select").select_option(label="any of these rules (OR)")
        either = changed_from(both)
        assert either > recent
        page.screenshot(path=str(tmp_path / "rule-builder.png"), full_page=True)
        assert page.get_by_text("official Jupyter news").count() == 0

        # Open the saved group: its rules replace the rows and the count is its own.
        panel.locator(".bm-saved-groups select").select_option(label=f"{SAVED} ({saved.members:,})")
        panel.locator(".bm-open-group").click()
        expect(panel.locator(".bm-segment-status")).to_contain_text(f"opened '{SAVED}'")
        expect(count).to_contain_text(f"{saved.members:,} recipients")
        expect(panel.locator(".bm-rule")).to_have_count(3)

        preview = page.locator(".jp-OutputArea-output .bm-preview")
        expect(preview).to_be_visible()
        preview.locator(".bm-preview-test-send").click()
        result = preview.locator(".bm-test-send-result")
        expect(result).to_contain_text("[TEST]")
        for address in TESTERS:
            expect(result.locator("tr", has_text=address)).to_contain_text("sent")
        page.screenshot(path=str(tmp_path / "preview-test-send.png"), full_page=True)
        browser.close()

    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(TESTERS)
    sent = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
    assert str(sent["Subject"]).startswith("[TEST] ")
    assert (tmp_path / "rule-builder.png").stat().st_size > 10_000
