"""Every predefined e-mail template scores at most 0 in SpamAssassin, as it is sent.

Each template is rendered for a sample recipient of its language through the real
renderer and MIME builder, and all of them are scored by one ``spamassassin -L -t``
process over an mbox (network tests off; one process, because starting SpamAssassin
takes longer than scoring). The three vet reminders used to score 2.2
(HTML_IMAGE_ONLY_32: an image in an HTML part of 2800-3200 characters).
"""

from __future__ import annotations

import datetime as dt
import mailbox
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bulkmail_kernel.compose.mime import build_mime
from bulkmail_kernel.compose.render import Mailbox, render
from bulkmail_kernel.compose.templates import list_templates, load_template

REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
WHEN = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
PEOPLE = {
    "sk": {"first_name": "Mária", "last_name": "Kováčová", "gender": "f"},
    "cs": {"first_name": "Jana", "last_name": "Dvořáková", "gender": "f"},
    "ru": {"first_name": "Иван", "last_name": "Петров", "patronymic": "Петрович", "gender": "m"},
    "en": {"first_name": "John", "last_name": "Smith", "gender": "m"},
}
STATUS = re.compile(r"score=(-?[\d.]+)\s.*?tests=(.*?)\s+autolearn", re.DOTALL)


def _email_templates() -> list[str]:
    frame = list_templates(REPO_TEMPLATES)
    return sorted(frame.loc[frame["channel"] == "email", "name"])


def _message(name: str) -> tuple[str, bytes]:
    template = load_template(REPO_TEMPLATES / name)
    row = {
        **PEOPLE[template.language or "sk"],
        "address": "customer@example.org",
        "contact_point_id": 7,
    }
    rendered = render(
        template,
        row,
        values=template.sample,
        unsubscribe_url="https://shop.example.com/unsubscribe?t=Zk3q9",
        unsubscribe_mailto="unsubscribe@shop.example.com?subject=unsubscribe%20Zk3q9",
        sender=Mailbox("Shop", "news@shop.example.com"),
    )
    message_id = f"<{uuid.uuid4().hex}@shop.example.com>"
    return message_id, build_mime(rendered, message_id=message_id, date=WHEN)


def test_every_email_template_scores_at_most_zero(tmp_path: Path) -> None:
    binary = shutil.which("spamassassin")
    if binary is None:
        pytest.skip("spamassassin is not installed (Debian: apt-get install spamassassin)")
    names = _email_templates()
    assert len(names) >= 12
    by_id: dict[str, str] = {}
    box = mailbox.mbox(tmp_path / "in.mbox")
    for name in names:
        message_id, data = _message(name)
        by_id[message_id] = name
        box.add(mailbox.mboxMessage(data))
    box.flush()
    box.close()
    with (tmp_path / "in.mbox").open("rb") as stdin:
        result = subprocess.run(
            # -L: local tests only; no Bayes learning, and HOME in tmp_path, so the run
            # leaves nothing behind in the user's ~/.spamassassin.
            [binary, "--mbox", "-L", "-t", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
            stdin=stdin,
            capture_output=True,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    (tmp_path / "out.mbox").write_bytes(result.stdout)
    scores: dict[str, tuple[float, str]] = {}
    scored_box = mailbox.mbox(tmp_path / "out.mbox")
    for scored in scored_box:
        match = STATUS.search(" ".join(str(scored["X-Spam-Status"]).split()))
        assert match, scored["X-Spam-Status"]
        rules = match.group(2).replace(", ", ",").replace(",", " ")
        scores[by_id[str(scored["Message-ID"]).strip()]] = (float(match.group(1)), rules)
    scored_box.close()
    assert sorted(scores) == names
    too_high = {name: got for name, got in scores.items() if got[0] > 0}
    assert not too_high, "templates scoring above 0 (score, rules hit): " + "; ".join(
        f"{name}: {score} ({rules})" for name, (score, rules) in sorted(too_high.items())
    )
