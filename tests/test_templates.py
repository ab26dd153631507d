from __future__ import annotations

import datetime as dt
import email
import email.policy
import struct
import textwrap
import zlib
from pathlib import Path

import pandas as pd
import pytest

from bulkmail_kernel.compose.checks import check_template
from bulkmail_kernel.compose.mime import build_mime
from bulkmail_kernel.compose.render import render
from bulkmail_kernel.compose.sandbox import format_date, row_to_context, salutation
from bulkmail_kernel.compose.templates import list_templates, load_template, template_from_html
from bulkmail_kernel.exceptions import TemplateError

REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
UNSUB = "https://example.com/u/tok123"
SENDER = "Firma s.r.o. <info@firma.sk>"

PEOPLE = {
    "sk": dict(first_name="Mária", last_name="Kováčová", patronymic=None, gender="f"),
    "ru": dict(first_name="Иван", last_name="Петров", patronymic="Петрович", gender="m"),
    "en": dict(first_name="John", last_name="Smith", patronymic=None, gender="m"),
}


def person(language: str, **extra) -> dict:
    return {
        "contact_point_id": 7,
        "contact_id": 3,
        "language": language,
        "address": f"{language}.user@example.com",
        "pet_name": "Bobík",
        **PEOPLE[language],
        **extra,
    }


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0\xff\0\0"))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- predefined


def test_list_templates_shows_at_least_five_kinds_in_three_languages():
    frame = list_templates(REPO_TEMPLATES)
    assert list(frame.columns) == [
        "name",
        "language",
        "channel",
        "description",
        "required",
        "folder",
    ]
    kinds = {name.rsplit("_", 1)[0] for name in frame["name"]}
    assert {"invitation", "newsletter", "address_change", "vet_reminder", "sms_reminder"} <= kinds
    assert set(frame["language"]) == {"sk", "ru", "en"}
    assert (frame["description"].str.len() > 10).all()


@pytest.mark.parametrize("name", sorted(p.name for p in REPO_TEMPLATES.iterdir()))
@pytest.mark.parametrize("language", ["sk", "ru", "en"])
def test_every_predefined_template_renders_and_passes_header_checks(name, language):
    template = load_template(REPO_TEMPLATES / name)
    row = person(language)
    message = render(template, row, values=template.sample, unsubscribe_url=UNSUB, sender=SENDER)
    if template.channel == "sms":
        assert message.sms
        assert "{{" not in message.sms
        assert message.html is None
        return
    assert "{{" not in message.html
    assert "{%" not in message.html
    assert f'href="{UNSUB}"' in message.html  # visible unsubscribe link
    assert UNSUB in message.text  # and in the generated text alternative
    assert "<style" not in message.html.split("</head>")[1]  # CSS inlined into the body
    assert 'style="' in message.html
    # the logo is embedded and referenced, with alt text
    assert len(message.inline_images) == 1
    assert f'src="cid:{message.inline_images[0].cid}"' in message.html
    assert 'alt=""' not in message.html
    data = build_mime(
        message, message_id="<1@firma.sk>", date=dt.datetime(2025, 9, 1, tzinfo=dt.UTC)
    )
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert [k.lower() for k in parsed] == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
    ]
    assert parsed["Subject"] == message.subject
    assert parsed["List-Unsubscribe"] == f"<{UNSUB}>"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    # the salutation is in the template's language
    greeting = {"sk": "Váž", "ru": "Уважаем", "en": "Dear"}[template.language]
    assert greeting in message.html


def test_template_language_drives_salutation_and_dates():
    template = load_template(REPO_TEMPLATES / "invitation_ru")
    message = render(template, person("ru"), values=template.sample, unsubscribe_url=UNSUB)
    assert "Уважаемый Иван Петрович" in message.html
    assert "18.09.2025" in message.html
    en = load_template(REPO_TEMPLATES / "invitation_en")
    message = render(en, person("en"), values=en.sample, unsubscribe_url=UNSUB)
    assert "Dear Mr Smith" in message.html
    assert "18 September 2025" in message.subject


def test_load_template_by_name_uses_templates_dir(monkeypatch):
    monkeypatch.setenv("BULKMAIL_TEMPLATES_DIR", str(REPO_TEMPLATES))
    assert load_template("vet_reminder_sk").language == "sk"
    with pytest.raises(TemplateError, match=r"not found.*known templates: address_change_en"):
        load_template("no_such_template")


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("language", "gender", "expected"),
    [
        ("sk", "m", "Vážený pán Novák"),
        ("sk", "f", "Vážená pani Novák"),
        ("sk", None, "Vážená/ý Ján Novák"),
        ("cs", "m", "Vážený pane Novák"),
        ("cs", "f", "Vážená paní Novák"),
        ("en", "m", "Dear Mr Novák"),
        ("en", "f", "Dear Ms Novák"),
        ("en", None, "Dear Ján Novák"),
    ],
)
def test_salutation_by_language_and_gender(language, gender, expected):
    row = {"first_name": "Ján", "last_name": "Novák", "gender": gender}
    assert salutation(row, language) == expected


def test_russian_salutation_uses_name_and_patronymic():
    assert salutation({"first_name": "Иван", "patronymic": "Петрович", "gender": "m"}, "ru") == (
        "Уважаемый Иван Петрович"
    )
    assert salutation({"first_name": "Анна", "patronymic": "Сергеевна", "gender": "f"}, "ru") == (
        "Уважаемая Анна Сергеевна"
    )
    assert salutation({"first_name": "Саша", "gender": float("nan")}, "ru") == "Здравствуйте, Саша"
    assert salutation({}, "sk") == "Dobrý deň"


def test_date_formats_by_language():
    when = pd.Timestamp("2025-07-01")
    assert format_date(when, "sk") == "1. 7. 2025"
    assert format_date(when, "cs") == "1. 7. 2025"
    assert format_date(when, "ru") == "01.07.2025"
    assert format_date(when, "en") == "1 July 2025"
    assert format_date("2025-07-01", "en") == "1 July 2025"
    assert format_date(pd.NaT, "sk") == ""
    # a UTC timestamp just before midnight is already the next day in Bratislava
    assert format_date(pd.Timestamp("2025-06-30 23:30", tz="UTC"), "sk") == "1. 7. 2025"


def test_pandas_values_become_plain_python():
    frame = pd.DataFrame(
        {
            "first_name": pd.Series(["Ján", None], dtype="str"),
            "score": [1.5, float("nan")],
            "n": pd.array([3, None], dtype="Int64"),
            "seen": pd.to_datetime(["2025-07-01", None]),
            "city": pd.Categorical(["Košice", None]),
        }
    )
    first, second = (row_to_context(row) for _, row in frame.iterrows())
    assert first["seen"].year == 2025
    assert type(first["n"]) is int
    assert second == {"first_name": None, "score": None, "n": None, "seen": None, "city": None}


def test_default_filter_replaces_empty_and_nan_values():
    template = template_from_html(
        "<p>{{ city | default('neznáme') }}|{{ missing | default('x') }}|"
        "{{ filled | default('y') }}</p>",
        subject="s",
    )
    for empty in ("", "  ", None, float("nan"), pd.NA):
        html = render(template, {"city": empty, "filled": "ok"}).html
        assert "<p>neznáme|x|ok</p>" in html


def test_nan_cell_prints_as_nothing_not_none():
    template = template_from_html("<p>[{{ city }}]</p>", subject="[{{ city }}]")
    message = render(template, pd.Series({"city": float("nan")}))
    assert "<p>[]</p>" in message.html
    assert message.subject == "[]"


# --------------------------------------------------------------------------- errors


def test_unknown_variable_names_template_part_line_and_variable():
    template = template_from_html(
        "<html><body>\n<p>Hello</p>\n<p>{{ pet_nam }}</p>\n</body></html>", subject="Hi", name="vet"
    )
    with pytest.raises(TemplateError) as info:
        render(template, person("sk"))
    err = info.value
    assert err.fields["template"] == "vet"
    assert err.fields["part"] == "html"
    assert err.fields["line"] == 3
    assert err.fields["variable"] == "pet_nam"
    assert "'vet', html, line 3" in str(err)
    assert "pet_nam" in str(err)
    assert "sk.user@example.com" in str(err)


def test_unknown_variable_in_subject_is_reported_for_the_subject():
    template = template_from_html("<p>x</p>", subject="Ahoj {{ frist_name }}", name="t")
    with pytest.raises(TemplateError, match=r"'t', subject, line 1: variable 'frist_name'"):
        render(template, person("sk"))


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateError) as info:
        template_from_html("<p>ok</p>\n<p>{% if x %}</p>\n", subject="s", name="broken")
    assert info.value.fields["line"] is not None
    assert info.value.fields["part"] == "html"
    assert "syntax error" in str(info.value)


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ first_name.__class__ }}",
        "{{ recipient.__init__.__globals__ }}",
    ],
)
def test_sandbox_violation_is_a_template_error(expression):
    template = template_from_html(f"<p>{expression}</p>", subject="s", name="evil")
    with pytest.raises(TemplateError, match=r"evil.*(sandbox violation|undefined)"):
        render(template, person("sk"))


def test_html_is_autoescaped_but_subject_and_text_are_not():
    template = template_from_html(
        "<p>{{ first_name }}</p>", subject="Hi {{ first_name }}", text="Hi {{ first_name }}"
    )
    message = render(template, {"first_name": "<script>alert(1)</script>", "address": "a@b.sk"})
    assert "&lt;script&gt;" in message.html
    assert "<script>" not in message.html
    assert message.subject == "Hi <script>alert(1)</script>"
    assert message.text == "Hi <script>alert(1)</script>"


def test_non_utf8_html_is_rejected_with_a_clear_message(tmp_path):
    with pytest.raises(TemplateError, match=r"not UTF-8.*re-save"):
        template_from_html("<p>Žltý kôň</p>".encode("cp1250"), subject="s")
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "template.toml").write_text('subject = "s"\n', encoding="utf-8")
    (folder / "body.html").write_bytes("<p>Ďakujeme</p>".encode("cp1250"))
    with pytest.raises(TemplateError, match=r"body.html: bytes are not UTF-8"):
        load_template(folder)


def test_utf8_bom_is_accepted():
    template = template_from_html("\ufeff<p>Ďakujeme</p>".encode(), subject="s")
    html = render(template, {}).html
    assert "\ufeff" not in html
    assert "<p>Ďakujeme</p>" in html


# ------------------------------------------------------------- folder, images, attachments


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "offer"
    folder.mkdir()
    (folder / "template.toml").write_text(
        textwrap.dedent(
            """\
            name = "offer"
            language = "sk"
            description = "Ponuka"
            required = ["pet_name"]
            subject = "Ponuka pre {{ pet_name }}"
            attachments = ["cennik.pdf"]
            """
        ),
        encoding="utf-8",
    )
    (folder / "body.html").write_text(
        textwrap.dedent(
            """\
            <html><head><style>.x { color: #c00; }</style></head><body>
            <img src="logo.png" alt="Logo">
            <table>
            {% for item in items | default([]) %}
            <tr><td class="x">{{ item }}</td></tr>
            {% endfor %}
            </table>
            <p class="x">{{ recipient | salutation }}, {{ pet_name }}</p>
            <a href="{{ unsubscribe_url }}">Odhlásiť</a>
            </body></html>
            """
        ),
        encoding="utf-8",
    )
    (folder / "logo.png").write_bytes(tiny_png())
    (folder / "cennik.pdf").write_bytes(b"%PDF-1.4 fake price list")
    return folder


def test_inline_image_becomes_a_cid_part_and_attachment_is_present(tmp_path):
    template = load_template(make_folder(tmp_path))
    message = render(
        template, person("sk"), values={"items": ["A", "B"]}, unsubscribe_url=UNSUB, sender=SENDER
    )
    # Jinja loops between table rows survive CSS inlining in place
    assert message.html.count('<td class="x" style="color: #c00;">') == 2
    parsed = email.message_from_bytes(
        build_mime(message, message_id="<2@firma.sk>"), policy=email.policy.default
    )
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    image = next(p for p in parsed.walk() if p.get_content_type() == "image/png")
    cid = image["Content-ID"].strip("<>")
    assert (
        f'src="cid:{cid}"'
        in next(p for p in parsed.walk() if p.get_content_type() == "text/html").get_content()
    )
    assert image.get_content() == tiny_png()
    pdf = next(p for p in parsed.walk() if p.get_content_type() == "application/pdf")
    assert pdf.get_filename() == "cennik.pdf"
    assert pdf.get_content() == b"%PDF-1.4 fake price list"


def test_send_as_is_skips_all_processing():
    html = (
        "<html><head><style>p{color:red}</style></head>"
        '<body><p>{{ first_name }}</p><img src="logo.png"></body></html>'
    )
    template = template_from_html(html, subject="s", send_as_is=True)
    message = render(template, {"first_name": "Ján", "address": "a@b.sk"})
    assert message.html == html.replace("{{ first_name }}", "Ján")
    assert message.text is None
    assert message.inline_images == ()


def test_missing_image_file_is_reported(tmp_path):
    with pytest.raises(TemplateError, match=r"cannot read .*missing.png"):
        template_from_html('<img src="missing.png" alt="x">', subject="s", folder=tmp_path)


def test_unknown_metadata_key_is_reported(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "template.toml").write_text('subject = "s"\nsubjct = "typo"\n', encoding="utf-8")
    with pytest.raises(TemplateError, match=r"unknown keys \['subjct'\]"):
        load_template(folder)


# --------------------------------------------------------------------------- checks


def frame_for(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, index=range(10, 10 + len(rows)))


def test_check_template_lists_exactly_the_failing_rows(tmp_path):
    template = load_template(make_folder(tmp_path))
    frame = frame_for(
        [
            person("sk", pet_name="Rex"),
            person("sk", pet_name=None, contact_point_id=8),
            person("en", pet_name="Max", contact_point_id=9),
            person("sk", pet_name="", contact_point_id=11),
        ]
    )
    problems = check_template(template, frame)
    assert list(problems["row"]) == [11, 13]
    assert list(problems["contact_point_id"]) == [8, 11]
    assert set(problems["variable"]) == {"pet_name"}


def test_check_template_with_a_missing_column_lists_every_row_and_the_variable():
    template = template_from_html("<p>{{ pet_name }}</p>", subject="s", name="vet")
    frame = frame_for(
        [{"first_name": "A", "address": "a@b.sk"}, {"first_name": "B", "address": "b@b.sk"}]
    )
    problems = check_template(template, frame)
    assert list(problems["row"]) == [10, 11]
    assert list(problems["variable"]) == ["pet_name", "pet_name"]
    assert list(problems["part"]) == ["html", "html"]
    assert list(problems["line"]) == [1, 1]
    assert check_template(template, frame, values={"pet_name": "Rex"}).empty


def test_check_template_reports_a_bad_value_for_one_recipient():
    template = template_from_html("<p>{{ due | date }}</p>", subject="s")
    frame = frame_for([{"due": "2025-07-01"}, {"due": 12}])
    problems = check_template(template, frame)
    assert list(problems["row"]) == [11]
    assert "date filter got int" in problems["error"].iloc[0]


def test_check_template_catches_encoded_word_names():
    template = template_from_html("<p>x</p>", subject="Ahoj {{ first_name }}")
    frame = frame_for([{"first_name": "Ján"}, {"first_name": "=?UTF-8?Q?=0A?=Bcc: x@evil.com"}])
    problems = check_template(template, frame)
    assert list(problems["row"]) == [11]
    assert "encoded-word" in problems["error"].iloc[0]


def test_sendpulse_provider_rule_reports_other_variables():
    ok = template_from_html(
        "<p>{{ name }} {{ patronymic }} {{ surname }}</p>", subject="Hi {{ name }}"
    )
    frame = frame_for([{"first_name": "Иван", "last_name": "Петров", "patronymic": "Петрович"}])
    assert check_template(ok, frame, provider="sendpulse").empty
    assert "Иван Петрович Петров" in render(ok, frame.iloc[0]).html
    bad = template_from_html("<p>{{ name }} {{ pet_name }}</p>", subject="{{ city }}")
    problems = check_template(
        bad, frame, values={"pet_name": "x", "city": "y"}, provider="sendpulse"
    )
    assert sorted(zip(problems["part"], problems["variable"], strict=True)) == [
        ("html", "pet_name"),
        ("subject", "city"),
    ]
    assert problems["row"].isna().all()
    with pytest.raises(TemplateError, match=r"unknown provider"):
        check_template(ok, frame, provider="mailchimp")


def test_all_predefined_templates_check_clean_with_their_samples():
    frame = frame_for([person(lang) for lang in ("sk", "ru", "en")])
    for name in list_templates(REPO_TEMPLATES)["name"]:
        template = load_template(REPO_TEMPLATES / name)
        problems = check_template(template, frame, values=template.sample)
        assert problems.empty, (name, problems.to_dict("records"))
        assert set(template.required) <= template.variables() | {"company_name"}


def test_check_template_lists_one_row_per_recipient_and_problem():
    # A required value missing from the campaign's values (a typo) fails the rendering
    # too: that is one problem per recipient, not two.
    template = load_template("invitation_sk")
    values = dict(template.sample)
    values["event_nmae"] = values.pop("event_name")
    frame = frame_for([person("sk"), person("sk", contact_point_id=8)])
    problems = check_template(template, frame, values=values)
    assert len(problems) == 2
    assert list(problems["variable"]) == ["event_name", "event_name"]
    assert problems["part"].tolist() == ["subject", "subject"]
