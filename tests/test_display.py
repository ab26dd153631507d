"""What a notebook shows of a report: local time to the second, text in full, labels, blanks."""

from __future__ import annotations

import html as htmlmod
import math
from datetime import UTC, datetime

import pandas as pd
import pytest
from sending_support import make_campaign, sink_account

from bulkmail_kernel import (
    campaign_failures,
    history,
    list_campaigns,
    list_suppressions,
    queue,
    remove_from_queue,
    send,
    sms_fit_preview,
)
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.contacts.report import _Report
from bulkmail_kernel.display import ReadableFrame, display_cells, readable
from bulkmail_kernel.servers.sink import Sink

LONG_REASON = (
    "550 5.1.1 <anna.novakova@sk.example.net>: Recipient address rejected: "
    "User unknown in virtual mailbox table; check the spelling and import again"
)
#: The reason as the HTML table holds it (its < and > escaped).
LONG_HTML = htmlmod.escape(LONG_REASON)
MISSING = ("NaT", "None", "&lt;NA&gt;", "<NA>", "nan")


@pytest.fixture(autouse=True)
def bratislava(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_TZ", "Europe/Bratislava")


def sample() -> pd.DataFrame:
    sent = [datetime(2026, 6, 1, 10, 0, 5, 123456, tzinfo=UTC), None]
    return pd.DataFrame(
        {
            "message_id": [1, 2],
            "status": pd.Categorical(["deferred", "unknown"], categories=["deferred", "unknown"]),
            "sent_at": pd.to_datetime(sent, utc=True),
            "attempts": pd.array([3, None], dtype="Int64"),
            "last_error": pd.array([LONG_REASON, None], dtype="str"),
            "detail": [None, float("nan")],
            "cost": [0.1 * 3, float("nan")],
        }
    )


def test_notebook_html_is_readable_and_values_unchanged() -> None:
    plain = sample()
    frame = readable(plain)
    assert isinstance(frame, pd.DataFrame)
    # The data for analysis is untouched: same dtypes, same values, UTC microseconds kept.
    pd.testing.assert_frame_equal(pd.DataFrame(frame), plain)
    assert frame["sent_at"].iloc[0].microsecond == 123456
    html = frame._repr_html_()
    assert html is not None
    # 10:00:05 UTC in June is 12:00:05 in Bratislava, to the second.
    assert "<td>2026-06-01 12:00:05</td>" in html
    assert ".123456" not in html
    assert "+00:00" not in html
    assert "+02:00" not in html
    assert LONG_HTML in html  # not cut at 50 characters
    assert "deferred (will retry)" in html
    assert "unknown (check before resending)" in html
    assert "<td>0.3</td>" in html
    assert not any(word in html for word in MISSING)
    text = repr(frame)
    assert LONG_REASON in text
    assert "2026-06-01 12:00:05" in text
    assert not any(word in text for word in MISSING)
    # Global pandas options are left alone.
    assert pd.get_option("display.max_colwidth") == 50
    assert "..." in repr(plain)
    assert LONG_REASON not in repr(plain)


def test_filtered_frames_stay_readable_and_long_ones_show_their_ends() -> None:
    frame = readable(sample())
    failed = frame[frame["status"] == "deferred"]
    assert isinstance(failed, ReadableFrame)
    assert LONG_HTML in failed._repr_html_()
    many = readable(pd.DataFrame({"n": range(1000), "reason": [LONG_REASON] * 1000}))
    html = many._repr_html_()
    assert html.count("<tr>") == 10  # the first and last five rows (the header has a style)
    assert "<td>999</td>" in html
    assert "1,000 rows × 2 columns" in html


def test_display_cells_of_an_empty_frame() -> None:
    empty = readable(pd.DataFrame({"sent_at": pd.to_datetime([], utc=True), "status": []}))
    assert display_cells(empty).empty
    assert "sent_at" in empty._repr_html_()


def test_reports_show_local_seconds_and_full_reasons(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 3, name="spring", rate_per_hour=360_000)
    removed = queue("spring", db=database)["message_id"].iloc[:1]
    remove_from_queue("spring", removed, reason=LONG_REASON, db=database)
    send("spring", progress=False, db=database)
    frames = {
        "queue": queue("spring", db=database),
        "failures": campaign_failures("spring", db=database),
        "campaigns": list_campaigns(db=database),
        "suppressions": list_suppressions(db=database),
        "history": history(int(queue("spring", db=database)["contact_id"].iloc[1]), db=database),
    }
    for name, frame in frames.items():
        assert isinstance(frame, ReadableFrame), name
        html = frame._repr_html_()
        assert html is not None
        assert not any(word in html for word in MISSING), name
    q = frames["queue"]
    # Values for analysis: tz-aware local datetimes; the display: local time to the second.
    assert str(q["sent_at"].dtype) == "datetime64[us, Europe/Bratislava]"
    sent_at = q["sent_at"].dropna().iloc[0]
    assert sent_at.tzinfo is not None
    assert f"<td>{sent_at:%Y-%m-%d %H:%M:%S}</td>" in frames["queue"]._repr_html_()
    assert f"{sent_at:%Y-%m-%d %H:%M:%S}." not in frames["queue"]._repr_html_()
    assert "removed from the queue" in frames["failures"]._repr_html_()
    assert LONG_HTML in frames["failures"]._repr_html_()
    assert f"{frames['history']['occurred_at'].iloc[0]:%Y-%m-%d %H:%M:%S}" in (
        frames["history"]._repr_html_()
    )


def test_sms_cost_table_shows_the_whole_text() -> None:
    text = "Pripomíname Vám termín v ambulancii zajtra o 9:00, prosíme potvrďte účasť – ďakujeme"
    frame = sms_fit_preview([text], 0.05)
    assert frame["segments"].dtype == "int64"
    html = frame._repr_html_()
    assert text in html  # the dash that forces UCS-2 sits past pandas' 50 characters
    assert "..." not in html


def test_import_report_shows_full_reasons() -> None:
    report = _Report()
    report.add(7, "rejected", "email", "=HYPERLINK(x)", LONG_REASON)
    frame = report.frame()
    assert isinstance(frame, ReadableFrame)
    assert frame["row"].dtype == "int64"
    assert LONG_HTML in frame._repr_html_()


def test_monitor_errors_show_full_reasons_in_local_time() -> None:
    from bulkmail_kernel.widgets.monitor import errors_html

    at = pd.to_datetime([datetime(2026, 12, 3, 14, 5, 9, 987654, tzinfo=UTC)], utc=True)
    errors = readable(
        pd.DataFrame(
            {
                "message_id": [5],
                "recipient": ["anna@sk.example.net"],
                "status": ["deferred"],
                "code": [None],
                "error": [LONG_REASON + " " + "x" * 200],
                "at": at,
            }
        )
    )
    html = errors_html(errors)
    assert LONG_HTML + " " + "x" * 200 in html  # no longer cut at 200 characters
    assert "2026-12-03 15:05:09" in html  # Bratislava in winter, to the second
    assert "deferred (will retry)" in html
    assert not any(word in html for word in MISSING)


def test_campaign_report_keeps_its_complaint_rate(database: dbmod.Database, sink: Sink) -> None:
    from bulkmail_kernel import campaign_report, provider_status

    sink_account(database, sink.port)
    make_campaign(database, 2, name="spring", rate_per_hour=360_000)
    report = campaign_report("spring", db=database)
    assert isinstance(report, ReadableFrame)
    assert "complaints" in report.attrs  # attrs survive the readable wrapper
    assert report.loc["queued", "messages"] == 2
    assert "<td>2</td>" in report._repr_html_()
    # The statuses of the index read as labels too; the index itself is unchanged.
    assert "<th>deferred (will retry)</th>" in report._repr_html_()
    assert "deferred" in report.index
    # The share reads as a percentage; the value stays a fraction for analysis.
    assert report.loc["queued", "share"] == 1.0
    assert "<td>100.0 %</td>" in report._repr_html_()
    assert "<td>0.0 %</td>" in report._repr_html_()
    assert isinstance(provider_status("spring", db=database), ReadableFrame)


def test_an_unthrottled_rate_reads_unlimited(database: dbmod.Database, sink: Sink) -> None:
    sink_account(database, sink.port)
    make_campaign(database, 2, name="spring")
    send("spring", rate_per_hour=math.inf, progress=False, db=database)
    listed = list_campaigns(db=database)
    assert math.isinf(listed["rate_per_hour"].iloc[0])
    assert "<td>unlimited</td>" in listed._repr_html_()
    assert "inf" not in display_cells(listed)["rate_per_hour"].iloc[0]


def test_the_sms_cost_table_names_the_character_that_forces_ucs2() -> None:
    quoted = "Ahoj Jana, „Excel“ kurz zajtra o 9:00"
    frame = sms_fit_preview([quoted, "Ahoj Jana, kurz zajtra o 9:00", "Termín 9:00"], 0.05)
    assert list(frame["encoding"]) == ["UCS-2", "GSM-7", "UCS-2"]
    assert list(frame["ucs2_because"]) == ['"„" (U+201E) at 12', "", '"í" (U+00ED) at 5']
    assert list(frame["fitted_encoding"]) == ["GSM-7"] * 3
    html = frame._repr_html_()
    assert '<td>"„" (U+201E) at 12</td>' in html
    assert not any(word in html for word in MISSING)  # a GSM-7 text: a blank cell
    # A non-breaking space looks like a space: the code point says what it is.
    assert sms_fit_preview(["9:00\u00a0h"], 0.05)["ucs2_because"].iloc[0] == (
        '"\u00a0" (U+00A0) at 5'
    )


def test_template_checks_and_lists_read_in_full() -> None:
    from bulkmail_kernel import check_template, list_templates, template_from_html

    templates = list_templates()
    assert isinstance(templates, ReadableFrame)
    longest = max(templates["description"], key=len)
    assert len(longest) > 50
    assert htmlmod.escape(longest, quote=False) in templates._repr_html_()
    template = template_from_html("<p>{{ name }} from {{ city }}</p>", "Hi", name="t")
    people = pd.DataFrame({"contact_point_id": [1], "address": ["a@b.sk"], "name": ["Ann"]})
    problems = check_template(template, people, values={"city": "Nitra"}, provider="sendpulse")
    assert isinstance(problems, ReadableFrame)
    error = problems["error"].iloc[0]
    assert len(error) > 50
    assert "'city' would be sent literally" in error
    html = problems._repr_html_()
    assert f"<td>{htmlmod.escape(error, quote=False)}</td>" in html
    assert not any(word in html for word in MISSING)  # no row, line or address: blanks


def test_sending_side_frames_are_readable(database: dbmod.Database, sink: Sink) -> None:
    from bulkmail_kernel import (
        campaign_timeline,
        check_account,
        live_workers,
        template_from_html,
        test_send,
    )

    sink_account(database, sink.port)
    make_campaign(database, 3, name="spring", rate_per_hour=360_000)
    checks = check_account("sink", db=database)
    assert isinstance(checks, ReadableFrame)
    assert not any(word in checks._repr_html_() for word in MISSING)
    html_body = '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">x</a>'
    template = template_from_html(html_body, "Spring", name="spring")
    samples = test_send("spring", ["me@test.sk"], template=template, db=database)
    assert isinstance(samples, ReadableFrame)
    assert "<td>sent</td>" in samples._repr_html_()
    assert isinstance(live_workers(db=database), ReadableFrame)
    send("spring", progress=False, db=database)
    timeline = campaign_timeline("spring", freq="1s", db=database)
    assert isinstance(timeline, ReadableFrame)
    assert timeline.attrs["freq"] == "1s"
    first = timeline.index[0]
    assert str(first.tz) == "Europe/Bratislava"
    html = timeline._repr_html_()
    # The bins read as local time to the second, without the offset pandas prints.
    assert f"<th>{first:%Y-%m-%d %H:%M:%S}</th>" in html
    assert "+01:00" not in html
    assert "+02:00" not in html
    empty = campaign_timeline(make_campaign(database, 1, name="later", first=10), db=database)
    assert isinstance(empty, ReadableFrame)
    assert "sent" in empty._repr_html_()


def test_identity_merges_read_as_a_report(sqlite_url: str) -> None:
    from bulkmail_kernel import identity_merges

    frame = identity_merges(db=dbmod.open_database(sqlite_url))
    assert isinstance(frame, ReadableFrame)
    assert frame.empty
