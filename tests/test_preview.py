from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from bulkmail_kernel.compose.checks import images_without_alt, preview_warnings
from bulkmail_kernel.compose.render import render
from bulkmail_kernel.compose.templates import load_template, template_from_html
from bulkmail_kernel.widgets.preview import (
    MOBILE_WIDTH,
    preview,
    preview_html,
    preview_summary,
    recipient_labels,
)

REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_point_id": [1, 2, 3],
            "first_name": ["Ján", "Mária", "Иван"],
            "last_name": ["Novák", "Kováčová", "Петров"],
            "patronymic": [None, None, "Петрович"],
            "gender": pd.Categorical(["m", "f", "m"]),
            "language": pd.Categorical(["sk", "sk", "ru"]),
            "address": ["jan@sk.example.net", "maria@sk.example.net", "ivan@ru.example.net"],
            "pet_name": ["Bobík", "Mica", "Барсик"],
        }
    )


def test_warnings_for_missing_unsubscribe_alt_and_long_subject():
    template = template_from_html('<p>Hi</p><img src="https://x/a.png">', subject="S" * 90)
    message = render(template, frame().iloc[0], unsubscribe_url="https://e.com/u/1")
    warnings = preview_warnings(message)
    assert any("unsubscribe link" in w for w in warnings)
    assert any("'https://x/a.png' has no alt" in w for w in warnings)
    assert any("90 characters" in w for w in warnings)
    no_url = preview_warnings(render(template, frame().iloc[0]))
    assert any("No unsubscribe URL" in w for w in no_url)


def test_predefined_template_has_no_warnings():
    template = load_template(REPO_TEMPLATES / "vet_reminder_sk")
    message = render(
        template, frame().iloc[0], values=template.sample, unsubscribe_url="https://e.com/u/1"
    )
    assert preview_warnings(message) == []


def test_sms_segment_warning():
    template = template_from_html("<p>x</p>", subject="s", sms="{{ text }}")
    message = render(template, {}, values={"text": "ž" * 71}, unsubscribe_url="https://e.com/u/1")
    assert any("2 segments (UCS-2, 71 units" in w for w in preview_warnings(message))


def test_images_without_alt():
    assert images_without_alt('<img src="a.png" alt=""><img src="b.png"><IMG SRC="c.png">') == [
        "b.png",
        "c.png",
    ]


def test_preview_html_is_an_escaped_iframe_of_the_width_with_cid_images_inlined():
    template = load_template(REPO_TEMPLATES / "invitation_en")
    message = render(
        template, frame().iloc[0], values=template.sample, unsubscribe_url="https://e.com/u/1"
    )
    out = preview_html(message, MOBILE_WIDTH)
    assert out.startswith("<iframe srcdoc=")
    assert "width: 375px" in out
    doc = html.unescape(out.split('srcdoc="', 1)[1].split('" style=', 1)[0])
    assert "cid:" not in doc
    assert "data:image/png;base64," in doc
    assert "Dear Mr Novák" in doc
    assert '"' not in out.split('srcdoc="', 1)[1].split('" style=', 1)[0]


def test_summary_shows_size_and_attachments():
    template = load_template(REPO_TEMPLATES / "newsletter_sk")
    message = render(
        template,
        frame().iloc[1],
        values=template.sample,
        unsubscribe_url="https://e.com/u/1",
        sender="Firma <info@firma.sk>",
    )
    summary = preview_summary(message)
    assert "Mária Kováčová &lt;maria@sk.example.net&gt;" in summary
    assert " KB" in summary


def test_recipient_labels_are_unique_and_searchable():
    assert recipient_labels(frame()) == [
        "1. Ján Novák <jan@sk.example.net>",
        "2. Mária Kováčová <maria@sk.example.net>",
        "3. Иван Петров <ivan@ru.example.net>",
    ]


def test_widget_next_previous_picker_and_width():
    template = load_template(REPO_TEMPLATES / "vet_reminder_sk")
    panel = preview(template, frame(), sender="Labka <info@labka.sk>")
    assert "Novák" in panel.body.value
    assert "Bobík" in panel.body.value
    panel.next_button.click()
    assert panel.index == 1
    assert "Kováčová" in panel.body.value
    assert "Mica" in panel.body.value
    assert "Mária Kováčová" in panel.summary.value
    assert panel.picker.value == "2. Mária Kováčová <maria@sk.example.net>"
    panel.prev_button.click()
    panel.prev_button.click()  # wraps around to the last recipient
    assert "Барсик" in panel.body.value
    panel.picker.value = "1. Ján Novák <jan@sk.example.net>"
    assert panel.index == 0
    assert "Novák" in panel.body.value
    panel.width_toggle.value = MOBILE_WIDTH
    assert "width: 375px" in panel.body.value
    assert "No warnings" in panel.warnings.value
    assert "Vážený pán Novák" in panel.text_view.value


def test_widget_shows_render_errors_instead_of_crashing():
    template = template_from_html("<p>{{ missing_value }}</p>", subject="s")
    panel = preview(template, frame())
    assert "missing_value" in panel.warnings.value
    assert panel.body.value == ""
