"""Driving JupyterLab in Chromium: open a notebook and run all its cells, as an analyst does."""

from __future__ import annotations

from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout


def open_and_run_all(browser: Browser, url: str) -> Page:
    """Open the notebook at ``url`` in a new page, accept its kernel, and Run All Cells."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    # Lab may still ask which kernel to use; the notebook's own (python3) is preselected.
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(state="visible", timeout=5_000)
        dialog.locator("button:has-text('Select')").click()
    except PlaywrightTimeout:
        pass
    # The kernel must be ready before "Run All", or the cells queue behind its start.
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    return page
