"""bulkmail's errors in a real notebook kernel: one short box, the traceback folded away."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bulkmail_kernel.exceptions import ConfigError, FilterError
from bulkmail_kernel.widgets.errors import error_lines

ROOT = Path(__file__).resolve().parents[1]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.slow


def _run(cells: list[str], cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(cwd)}},
        extra_arguments=[f"--IPKernelApp.exec_lines=import sys; sys.path.insert(0, {str(ROOT)!r})"],
    )
    client.execute()
    return nb


def _error(cell: nbformat.NotebookNode) -> dict[str, object]:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1, cell.outputs
    return dict(errors[0])


def test_a_bulkmail_error_is_one_box_and_others_keep_their_traceback(tmp_path: Path) -> None:
    nb = _run(
        [
            "import bulkmail_kernel as bm",
            # A deliberate error raised inside the package: a filter on an unknown language.
            "bm.FilterSpec(language=['de'])",
            "%tb",
            "1 / 0",
            "print('still running')",
        ],
        tmp_path,
    )
    box = _error(nb.cells[1])
    assert box["ename"] == "FilterError"
    lines = [_ANSI.sub("", line) for line in box["traceback"]]  # type: ignore[attr-defined]
    text = "\n".join(lines)
    # One box: what kind of problem, the message saying what and where, how to unfold.
    assert lines[0] == "The filter cannot be applied (FilterError)"
    assert "language: 'de' is not one of sk, cs, ru, en" in text
    assert lines[-1] == "(the traceback is folded away: run %tb in a cell to see it)"
    assert len(lines) <= 8, text
    for stack_word in ("File ", "Traceback", "site-packages"):
        assert stack_word not in text
    # %tb unfolds the whole stack of the last error, down to the package frame that raised.
    unfolded = _ANSI.sub("", str(nb.cells[2].outputs))
    assert "FilterError" in unfolded
    assert "bulkmail_kernel/segments/spec.py" in unfolded
    # Any other exception keeps IPython's usual traceback.
    other = _error(nb.cells[3])
    assert other["ename"] == "ZeroDivisionError"
    assert "Traceback" in _ANSI.sub("", "\n".join(other["traceback"]))  # type: ignore[arg-type]
    assert "still running" in str(nb.cells[4].outputs)


def test_error_lines_wrap_long_messages_and_show_fields() -> None:
    error = ConfigError("sender account 'news': " + "a very long explanation " * 12, account="news")
    lines = [_ANSI.sub("", line) for line in error_lines(error)]
    assert lines[0] == "A setting is missing or wrong (ConfigError)"
    assert all(len(line) <= 96 for line in lines)
    assert "account: news" in lines[-2]
    # The message is kept word for word, only wrapped.
    assert " ".join(lines[1:-2]).split() == error.message.split()


def test_error_lines_of_an_error_without_fields() -> None:
    lines = [_ANSI.sub("", line) for line in error_lines(FilterError("no such field: 'x'"))]
    assert lines == [
        "The filter cannot be applied (FilterError)",
        "no such field: 'x'",
        "(the traceback is folded away: run %tb in a cell to see it)",
    ]


def test_the_skip_warning_is_its_one_line_in_a_notebook(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    setup = f"""
import warnings
import pandas as pd
import bulkmail_kernel as bm
url = {url!r}
people = pd.DataFrame({{"first_name": ["Ján", "Eva"], "email": ["jan@a.sk", "eva@a.sk"],
                       "mailing_allowed": ["yes", "no"]}})
bm.import_contacts(people, url=url, progress=False)
bm.add_sender_account("out", kind="file", from_email="news@shop.sk",
                      settings={{"folder": {str(tmp_path / "out")!r},
                                "unsubscribe_url": "https://shop.sk/u?t={{token}}"}}, url=url)
html = '<p>{{{{ first_name }}}}</p><a href="{{{{ unsubscribe_url }}}}">x</a>'
t = bm.template_from_html(html, "Pozvánka", name="t")
bm.create_campaign("c", sender="out", template=t, url=url)
"""
    nb = _run(
        [
            setup,
            "queued = bm.register('c', bm.contacts_frame(url=url), url=url)",
            "warnings.warn('not ours')",
        ],
        tmp_path,
    )
    assert not [o for o in nb.cells[0].outputs if o.output_type == "error"], nb.cells[0].outputs
    (said,) = [o for o in nb.cells[1].outputs if o.output_type == "stream"]
    assert said["name"] == "stderr"
    assert said["text"] == (
        "campaign 'c': 1 of 2 recipients skipped (1 mailing not allowed); 1 registered; "
        "bm.skipped('c') lists them\n"
    )
    # Any other warning keeps Python's usual form (file, line, category).
    other = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "UserWarning: not ours" in other
