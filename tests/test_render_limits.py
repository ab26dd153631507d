"""Render limits: no template or pasted HTML can render for long or grow large.

Each runaway template must stop with a TemplateError naming the recipient, the
template and the limit, having used little memory (tracemalloc peak) and little
CPU time: the time limit is wall-clock, so CPU time is at most the limit plus the
one step that was running when it passed.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from dataclasses import replace

import pandas as pd
import pytest
from sending_support import sink_account

import bulkmail_kernel as cm
from bulkmail_kernel import db as dbmod
from bulkmail_kernel.compose.render import render
from bulkmail_kernel.compose.templates import load_template, template_from_html
from bulkmail_kernel.contacts.frame import contacts_frame
from bulkmail_kernel.contacts.importer import import_contacts
from bulkmail_kernel.exceptions import ConfigError, TemplateError
from bulkmail_kernel.servers.sink import Sink
from bulkmail_kernel.widgets.preview import preview

LIMIT_S = 0.5
#: Far below what any runaway here would allocate (gigabytes), far above a normal render.
PEAK_BYTES = 24_000_000
ROW = {"first_name": "Jana", "address": "jana@x.sk", "contact_id": 7}

RUNS_TOO_LONG = {
    "nested range loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "loop over a list literal": (
        "{% for a in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 10000 %}"
        "{% for b in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 10000 %}{% endfor %}{% endfor %}"
    ),
    "nested loops over short lists": (
        "{% set l = [0] * 1000 %}{% for a in l %}{% for b in l %}{% for c in l %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "printing nothing, many times": (
        "{% set l = [''] * 1000 %}{% for a in l %}{% for b in l %}{% for c in l %}{{ c }}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "range with big steps": (
        "{% for i in range(0, 10**18, 10**13) %}"
        "{% for j in range(-10**18, 10**18, 2 * 10**13) %}{{ '' }}{% endfor %}{% endfor %}"
    ),
    "doubling macro recursion": (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% else %}xxxxxxxx{% endif %}"
        "{% endmacro %}{{ m(40) }}"
    ),
    "growing a list in a loop": (
        "{% set l = [1] %}{% for i in range(100000) %}{% set _ = l.append(i) %}"
        "{% for j in range(100000) %}{% endfor %}{% endfor %}{{ l | length }}"
    ),
}

GROWS_TOO_LARGE = {
    "string repetition": "{{ 'x' * 10**9 }}",
    "list repetition": "{{ ([1] * 10**9) | length }}",
    "bytes repetition": "{{ ('x'.encode() * 10**9) | length }}",
    "big power": "{{ 7 ** 1000000000 }}",
    "center filter": "{{ 'x' | center(10**9) }}",
    "center filter, literal width": "{{ 'x' | center(1000000000) }}",
    "center method": "{{ 'x'.center(1000000000) }}",
    "center method of bytes": "{{ 'x'.encode().center(1000000000) | length }}",
    "indent filter": "{{ 'a\nb\nc' | indent(1000000000) }}",
    "wordwrap filter": "{{ ('x ' * 500000) | wordwrap(1, wrapstring='yyyyyyyyyy') }}",
    "batch filter": "{{ [1] | batch(1000000000, 0) | list }}",
    "slice filter": "{{ [1] | slice(1000000000) | list }}",
    "replace filter": "{{ ('x' * 100000) | replace('x', 'y' * 1000) }}",
    "format width": "{{ '{:>1000000000}'.format(1) }}",
    "percent width": "{{ '%1000000000d' % 1 }}",
    "format filter width": "{{ '%1000000000d' | format(1) }}",
    "doubling with ~": "{% set x = 'xxxxxxxx' %}" + "{% set x = x ~ x %}" * 30 + "{{ x }}",
    "doubling in a namespace": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "doubling a list": (
        "{% set l = [1] %}{% for i in range(40) %}{% set _ = l.extend(l) %}{% endfor %}"
    ),
    "shared nested lists printed": "{% set a = ['x'] %}" + "{% set a = [a, a] %}" * 40 + "{{ a }}",
    "output in a loop": "{% for i in range(100000) %}{{ 'x' * 1999999 }}{% endfor %}",
    "static text in a macro loop": (
        "{% macro m() %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}{% endmacro %}"
        "{% for k in range(100) %}{% set _ = m() %}{% endfor %}"
    ),
    "lipsum": "{{ lipsum(1000000) }}",
    "urlize on long text": "{{ ('x ' * 999999) | urlize }}",
    "title on long text": "{{ ('ab ' * 666666) | title }}",
    "splitting long text": (
        "{% for i in range(100) %}{% set l = ('xy ' * 666666).split() %}{% endfor %}"
    ),
    "a long list, sorted": "{{ ((range(100000) | list) * 19) | sort | length }}",
    "tojson indent": "{{ (['x'] * 100000) | tojson(indent=1000) }}",
}


@pytest.fixture(autouse=True)
def _short_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_RENDER_TIMEOUT_S", str(LIMIT_S))
    monkeypatch.delenv("BULKMAIL_RENDER_MAX_BYTES", raising=False)


def _render_runaway(source: str) -> tuple[TemplateError, float, int]:
    """Render pasted HTML for Jana; return the error, CPU seconds and peak traced bytes.

    The CPU is this thread's, where the render runs: the process's would count whatever
    other threads of the test session (a monitor's refresh, a sink) did meanwhile. The
    objects the session already holds are frozen out of the collector first: a full
    collection of them that happens to fall inside the render (0.5 s for 5 million
    objects) is the session's cost, not the render's, and once made this test fail.
    """
    template = template_from_html(f"<p>{source}</p>", subject="Hi", name="pasted", send_as_is=True)
    gc.collect()
    gc.freeze()
    tracemalloc.start()
    started = time.thread_time()
    try:
        with pytest.raises(TemplateError) as caught:
            render(template, ROW)
        cpu = time.thread_time() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.unfreeze()
    return caught.value, cpu, peak


@pytest.mark.parametrize("source", RUNS_TOO_LONG.values(), ids=RUNS_TOO_LONG.keys())
def test_a_template_that_runs_too_long_stops_at_the_time_limit(source: str) -> None:
    error, cpu, peak = _render_runaway(source)
    assert error.message.startswith(
        f"rendering for contact 7 <jana@x.sk> stopped after {LIMIT_S:g} s "
        "(limit BULKMAIL_RENDER_TIMEOUT_S): "
    )
    assert "template 'pasted'" in error.message
    assert error.fields["recipient"] == "contact 7 <jana@x.sk>"
    assert error.fields["limit"] == "BULKMAIL_RENDER_TIMEOUT_S"
    assert cpu < 2 * LIMIT_S
    assert peak < PEAK_BYTES


@pytest.mark.parametrize("source", GROWS_TOO_LARGE.values(), ids=GROWS_TOO_LARGE.keys())
def test_a_template_that_grows_too_large_stops_at_the_size_limit(source: str) -> None:
    error, cpu, peak = _render_runaway(source)
    assert error.message.startswith(
        "rendering for contact 7 <jana@x.sk> stopped at the size limit of 2,000,000 bytes "
        "(limit BULKMAIL_RENDER_MAX_BYTES): "
    ), error.message
    assert error.fields["template"] == "pasted"
    assert error.fields["limit"] == "BULKMAIL_RENDER_MAX_BYTES"
    assert cpu < 2 * LIMIT_S
    assert peak < PEAK_BYTES


def test_endless_macro_recursion_stops_at_the_nesting_limit() -> None:
    error, _, peak = _render_runaway("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}")
    assert "macros call each other more than 64 deep" in error.message
    assert error.fields["recipient"] == "contact 7 <jana@x.sk>"
    assert peak < PEAK_BYTES


def test_the_error_names_the_line_of_the_runaway_loop() -> None:
    source = "<p>Hi</p>\n<p>{{ 'x' * 10**9 }}</p>"
    template = template_from_html(source, subject="Hi", name="pasted", send_as_is=True)
    with pytest.raises(TemplateError) as caught:
        render(template, ROW)
    assert caught.value.fields["line"] == 2
    assert "(template 'pasted', html, line 2)" in caught.value.message


def test_the_size_limit_counts_all_parts_of_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKMAIL_RENDER_MAX_BYTES", "1000")
    template = template_from_html(
        "<p>{{ 'é' * 300 }}</p>", subject="Hi", text="{{ 'x' * 500 }}", name="t"
    )
    with pytest.raises(TemplateError, match="grows past 1,000 bytes"):
        render(template, ROW)  # 600 bytes of HTML (é is two) and 500 of text
    monkeypatch.setenv("BULKMAIL_RENDER_MAX_BYTES", "1200")
    assert len(render(template, ROW).text or "") == 500


@pytest.mark.parametrize("value", ["0", "-1", "two", "inf"])
def test_bad_limit_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BULKMAIL_RENDER_TIMEOUT_S", value)
    template = template_from_html("<p>x</p>", subject="Hi", name="t")
    with pytest.raises(ConfigError, match="BULKMAIL_RENDER_TIMEOUT_S"):
        render(template, ROW)
    monkeypatch.setenv("BULKMAIL_RENDER_TIMEOUT_S", "2")
    monkeypatch.setenv("BULKMAIL_RENDER_MAX_BYTES", value)
    with pytest.raises(ConfigError, match="BULKMAIL_RENDER_MAX_BYTES"):
        render(template, ROW)


def test_normal_templates_render_as_before_within_the_limits() -> None:
    # Loops, macros, ~, *, %, filters with widths: all still work below the limits.
    source = (
        "{% macro row(p) %}<li>{{ p.name ~ ': ' ~ '%.2f' % p.price }} "
        "{{ '{:>6}'.format(p.qty) }}</li>{% endmacro %}"
        "<ul>{% for p in products %}{{ row(p) }}{% endfor %}</ul>"
        "{{ '-' * 20 }}|{{ 'ok' | center(8) }}|{{ [1, 2, 3, 4] | batch(2) | list }}"
        "|{{ 2 ** 10 }}|{{ range(3) | join(',') }}|{{ 'a b' | replace(' ', '_') }}"
    )
    template = template_from_html(source, subject="Hi {{ first_name }}", name="t", send_as_is=True)
    products = [{"name": "Čaj <zelený>", "price": 2.5, "qty": 3}]
    message = render(template, {**ROW, "products": products})
    assert message.html == (
        "<ul><li>Čaj &lt;zelený&gt;: 2.50      3</li></ul>"
        "--------------------|   ok   |[[1, 2], [3, 4]]|1024|0,1,2|a_b"
    )
    assert message.subject == "Hi Jana"


def test_every_predefined_template_renders_within_the_limits() -> None:
    for name in ("newsletter_sk", "invitation_ru", "vet_reminder_en", "sms_reminder_sk"):
        template = load_template(name)
        row = {**ROW, "last_name": "Nová", "gender": "f", "language": template.language}
        render(template, row, values=template.sample, unsubscribe_url="https://x.sk/u?t=1")


# --------------------------------------------------------------------------- callers


SLOW_FOR_EVA = (
    "<html><body><p>Dobrý deň {{ first_name }},</p>"
    "{% if first_name == 'Eva' %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}"
    '<p><a href="{{ unsubscribe_url }}">Odhlásiť</a></p></body></html>'
)


@pytest.fixture
def people(database: dbmod.Database) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "first_name": ["Ján", "Eva", "Peter"],
            "last_name": ["Novák", "Malá", "Kráľ"],
            "email": ["jan@a.sk", "eva@a.sk", "peter@a.sk"],
            "mailing_allowed": ["yes", "yes", "yes"],
        }
    )
    import_contacts(frame, db=database, progress=False)
    return contacts_frame(database)


def test_registration_skips_the_recipient_whose_render_breaks_a_limit(
    database: dbmod.Database, people: pd.DataFrame, sink: Sink
) -> None:
    sink_account(database, sink.port)
    template = template_from_html(SLOW_FOR_EVA, "Pozvánka", name="pomala")
    cm.create_campaign("jar", sender="sink", template=template, db=database)
    queue = cm.register("jar", people, db=database)
    assert sorted(queue["recipient"]) == ["jan@a.sk", "peter@a.sk"]
    skipped = cm.skipped("jar", db=database)
    assert list(skipped["address"]) == ["eva@a.sk"]
    reason = skipped["reason"].iloc[0]
    assert reason.startswith("cannot render: rendering for contact point ")
    assert "<eva@a.sk> stopped after 0.5 s (limit BULKMAIL_RENDER_TIMEOUT_S)" in reason
    assert "template 'pomala'" in reason


SLOW_FOR_ALL = (
    "<p>{{ first_name }}</p>{% for i in range(100000) %}{% for j in range(100000) %}"
    '{% endfor %}{% endfor %}<a href="{{ unsubscribe_url }}">x</a>'
)


def test_registration_stops_when_the_template_runs_too_long_for_everyone(
    database: dbmod.Database, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_RENDER_TIMEOUT_S", "0.1")
    names = [f"Osoba{i}" for i in range(8)]
    import_contacts(
        pd.DataFrame(
            {
                "first_name": names,
                "email": [f"o{i}@a.sk" for i in range(8)],
                "mailing_allowed": ["yes"] * 8,
            }
        ),
        db=database,
        progress=False,
    )
    sink_account(database, sink.port)
    template = template_from_html(SLOW_FOR_ALL, "Pozvánka", name="pomala")
    cm.create_campaign("jar", sender="sink", template=template, db=database)
    started = time.monotonic()
    with pytest.raises(TemplateError, match="for 5 recipients in a row") as caught:
        cm.register("jar", contacts_frame(database), db=database)
    # Five renders of 0.1 s, not eight: it stopped at the fifth.
    assert time.monotonic() - started < 7 * 0.1 + 0.5
    assert "registration stopped, nothing was registered; fix the template" in (
        caught.value.message
    )
    assert caught.value.fields["recipient"].endswith("<o4@a.sk>")
    assert cm.queue("jar", db=database).empty
    assert cm.skipped("jar", db=database).empty


def test_check_template_stops_when_the_template_runs_too_long_for_everyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BULKMAIL_RENDER_TIMEOUT_S", "0.1")
    frame = pd.DataFrame(
        {"first_name": list("ABCDEFGH"), "address": [f"{c}@a.sk" for c in "abcdefgh"]}
    )
    template = template_from_html(SLOW_FOR_ALL, subject="s", name="pomala")
    problems = cm.check_template(template, frame)
    assert list(problems["address"]) == ["a@a.sk", "b@a.sk", "c@a.sk", "d@a.sk", "e@a.sk", "e@a.sk"]
    assert problems["error"].iloc[0].startswith("stopped after 0.1 s")
    assert "for 5 recipients in a row" in problems["error"].iloc[-1]
    assert "checking stopped at this recipient" in problems["error"].iloc[-1]


def test_preview_shows_the_limit_error_for_that_recipient() -> None:
    frame = pd.DataFrame(
        {"first_name": ["Ján", "Eva"], "address": ["jan@a.sk", "eva@a.sk"], "contact_id": [1, 2]}
    )
    template = template_from_html(SLOW_FOR_EVA, subject="s", name="pomala")
    panel = preview(template, frame)
    assert "Dobrý deň Ján" in panel.body.value
    panel.show(1)
    assert panel.body.value == ""
    assert "rendering for contact 2 &lt;eva@a.sk&gt; stopped after 0.5 s" in panel.warnings.value


def test_a_text_alternative_made_per_message_counts_on_the_budget() -> None:
    # A template whose text alternative could not be derived when it was compiled gets
    # it from each rendered HTML (html2text, about a second a megabyte).
    template = template_from_html(
        "<p>{% for i in range(80000) %}word <b>bold</b> {% endfor %}</p>", subject="Hi"
    )
    parts = {k: v for k, v in template._compiled.parts.items() if k != "text"}
    compiled = replace(template._compiled, parts=parts, text_from_html_each_time=True)
    object.__setattr__(template, "_compiled", compiled)
    started = time.thread_time()
    with pytest.raises(TemplateError) as caught:
        render(template, ROW)
    assert time.thread_time() - started < 4 * LIMIT_S + 2
    assert caught.value.message.startswith("rendering for contact 7 <jana@x.sk> stopped ")
    assert caught.value.fields["part"] == "text"
