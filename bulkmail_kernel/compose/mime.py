r"""Turn a :class:`RenderedMessage` into MIME: fast bytes for sending, or a stdlib EmailMessage.

:func:`build_mime` assembles the bytes directly (fixed boundaries, C encoders from
``binascii``/``base64``, our own RFC 2047 encoder) because the stdlib's modern
``EmailMessage`` costs about a millisecond per message. The structure is the one the
stdlib builds, ``mixed[alternative[text, related[html, images]], attachments]``, minus
the parts a message does not need, and the tests parse our bytes with the stdlib and
compare them with :func:`build_email_message`.

Header integrity: every control character (CR, LF, NUL, VT, FF, ESC, DEL, \x1c-\x1f,
C1, \u2028, \u2029) in every value becomes a space here, whatever built the
:class:`RenderedMessage` (a DataFrame, a hand-made message); an address holding one is
refused; RFC 2047 encoded-word syntax in a value is refused (Python 3.11 turns
``=?UTF-8?Q?=0A?=`` into a real line break when it re-folds a header), and the
serialised header block is parsed back and must contain exactly the headers we meant
to write.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.policy
import re
import secrets
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import encode_rfc2231, format_datetime, make_msgid
from functools import lru_cache

from bulkmail_kernel.compose.render import (
    HEADER_CONTROLS,
    Mailbox,
    RenderedMessage,
    clean_header_value,
)
from bulkmail_kernel.compose.templates import Attachment, InlineImage
from bulkmail_kernel.exceptions import SendError, TemplateError

CRLF = b"\r\n"
# "==" cannot occur in quoted-printable output and "_" never occurs in base64, so a
# boundary of this shape can never collide with an encoded body.
_BOUNDARY = "==bm_" + secrets.token_hex(10)
#: Bytes of one encoded word's payload: 39 bytes -> 52 base64 chars -> a 64-char word.
_WORD_BYTES = 39
_MAX_LINE = 78
_ADDRESS = re.compile(
    r"^[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f-\x9f]+@[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f-\x9f]+$"
)
#: Bytes no header line may hold once its CRLF line ends are taken out: every control
#: but the folding tab (a bare CR or LF included).
_BAD_HEADER_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NEEDS_QUOTES = re.compile(r"[()<>\[\]:;@\\,.\"]")


def _fail(rendered: RenderedMessage, what: str) -> SendError:
    who = rendered.recipient or str(rendered.to)
    return SendError(
        f"message for recipient {who}: {what}",
        recipient=who,
        template=rendered.template_name,
    )


def encode_words(value: str) -> list[str]:
    """Return RFC 2047 base64 encoded words for a value, never splitting a character."""
    data = value.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        # Back off to a character boundary: UTF-8 continuation bytes are 0b10xxxxxx.
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return words


def _base64_lines(data: bytes) -> bytes:
    """Return base64 in CRLF-terminated lines of 76 characters (one C call, then slicing)."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
    return b"\r\n".join(lines) + b"\r\n" if lines else b""


def _fold_words(name: str, words: list[str]) -> str:
    """Return ``Name: w1 w2 ...`` folded before a space so lines stay within 78 characters."""
    line = f"{name}:"
    lines = []
    for word in words:
        # Never break before an empty word: a whitespace-only line is not a valid fold.
        if word and len(line) + 1 + len(word) > _MAX_LINE and line != f"{name}:":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def encode_header(name: str, value: str) -> str:
    """Return one folded header line (no trailing CRLF), RFC 2047-encoding non-ASCII values."""
    if value.isascii() and max(map(len, value.split(" ")), default=0) < 900:
        if len(name) + 2 + len(value) <= _MAX_LINE:
            return f"{name}: {value}"
        return _fold_words(name, value.split(" "))
    return _fold_words(name, encode_words(value))


def _ascii_address(rendered: RenderedMessage, address: str, field_name: str) -> str:
    address = address.strip()
    if HEADER_CONTROLS.search(address):
        raise _fail(
            rendered,
            f"{field_name} address {address!r} contains a control character: "
            "correct the address in the contact data",
        )
    if not _ADDRESS.match(address):
        raise _fail(rendered, f"{field_name} address {address!r} is not a valid e-mail address")
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise _fail(
            rendered,
            f"{field_name} address {address!r} has a non-ASCII local part, which needs SMTPUTF8; "
            "ask the recipient for an ASCII address",
        )
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _fail(rendered, f"{field_name} domain {domain!r} is not valid: {exc}") from exc
    return f"{local}@{domain}"


def _display_name(rendered: RenderedMessage, mailbox: Mailbox, field_name: str) -> str:
    return clean_header_value(
        mailbox.name, field_name=f"{field_name} name", recipient=rendered.recipient
    )


def _address_header(rendered: RenderedMessage, name: str, mailbox: Mailbox) -> str:
    address = _ascii_address(rendered, mailbox.address, name)
    display = _display_name(rendered, mailbox, name)
    if not display:
        return f"{name}: {address}"
    if display.isascii():
        if _NEEDS_QUOTES.search(display):
            display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return _fold_words(name, [*display.split(" "), f"<{address}>"])
    return _fold_words(name, [*encode_words(display), f"<{address}>"])


def _text_bytes(text: str) -> bytes:
    # Canonical line ends are CRLF; the trailing CRLF also tells b2a_qp to use CRLF.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\n", "\r\n")
    if not text.endswith("\r\n"):
        text += "\r\n"
    return text.encode("utf-8")


def _leaf_text(subtype: str, text: str) -> tuple[bytes, bytes]:
    data = _text_bytes(text)
    # Each non-ASCII character adds 1-3 bytes over its one character: a cheap size estimate.
    extra = len(data) - len(text)
    if extra * 6 > len(data):
        # Mostly Cyrillic: quoted-printable would triple the size.
        body = _base64_lines(data)
        cte = b"base64"
    else:
        body = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        cte = b"quoted-printable"
    head = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: %s\r\n' % (
        subtype.encode("ascii"),
        cte,
    )
    return head, body


def _filename_param(disposition: str, filename: str) -> str:
    filename = re.sub(r"[\"\\]", "_", HEADER_CONTROLS.sub("_", filename))
    if filename.isascii():
        return f'Content-Disposition: {disposition}; filename="{filename}"'
    return f"Content-Disposition: {disposition}; filename*={encode_rfc2231(filename, 'utf-8')}"


@lru_cache(maxsize=256)
def _binary_part(part: Attachment | InlineImage) -> tuple[bytes, bytes]:
    """Return (headers, base64 body) of an image or attachment, encoded once per process."""
    lines = [
        f"Content-Type: {part.content_type}",
        "Content-Transfer-Encoding: base64",
    ]
    if isinstance(part, InlineImage):
        lines.append(f"Content-ID: <{part.cid}>")
        lines.append(_filename_param("inline", part.filename))
    else:
        lines.append(_filename_param("attachment", part.filename))
    head = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return head, _base64_lines(part.data)


def _multipart(subtype: str, parts: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    boundary = f"{_BOUNDARY}_{subtype}".encode("ascii")
    head = b'Content-Type: multipart/%s;\r\n boundary="%s"\r\n' % (
        subtype.encode("ascii"),
        boundary,
    )
    chunks = []
    for part_head, part_body in parts:
        chunks += [b"--", boundary, CRLF, part_head, CRLF, part_body, CRLF]
    chunks += [b"--", boundary, b"--", CRLF]
    return head, b"".join(chunks)


def _content(rendered: RenderedMessage) -> tuple[bytes, bytes]:
    text = _leaf_text("plain", rendered.text) if rendered.text is not None else None
    html = _leaf_text("html", rendered.html) if rendered.html is not None else None
    if html is not None and rendered.inline_images:
        html = _multipart("related", [html, *map(_binary_part, rendered.inline_images)])
    if text is not None and html is not None:
        content = _multipart("alternative", [text, html])
    elif html is not None:
        content = html
    elif text is not None:
        content = text
    else:
        raise _fail(rendered, "has neither an HTML nor a text body (is this an SMS template?)")
    if rendered.attachments:
        content = _multipart("mixed", [content, *map(_binary_part, rendered.attachments)])
    return content


def _message_id(rendered: RenderedMessage, message_id: str) -> str:
    value = message_id.strip()
    if not value.startswith("<"):
        value = f"<{value}>"
    if not re.match(r"^<[!-;=?-~]+@[!-;=?-~]+>$", value):
        raise _fail(rendered, f"Message-ID {message_id!r} is not of the form <id@domain>")
    return value


def _header_values(
    rendered: RenderedMessage, message_id: str, date: dt.datetime | None
) -> list[tuple[str, str]]:
    if date is not None and date.tzinfo is None:
        raise _fail(rendered, "Date must be time-zone aware (e.g. datetime.now(UTC))")
    subject = clean_header_value(
        rendered.subject, field_name="subject", recipient=rendered.recipient
    )
    # Without a date the message is as the outbox stores it: Date is added at sending, once
    # (deliverability.dkim.prepare_outgoing), so a retry carries its own time.
    values = [("Subject", subject)]
    if date is not None:
        values.append(("Date", format_datetime(date)))
    values.append(("Message-ID", _message_id(rendered, message_id)))
    for name, value in rendered.headers:
        if not re.match(r"^[!-9;-~]+$", name):
            raise _fail(rendered, f"header name {name!r} is not a valid field name")
        values.append(
            (name, clean_header_value(value, field_name=name, recipient=rendered.recipient))
        )
    return values


def _verify_header_block(rendered: RenderedMessage, data: bytes, expected: list[str]) -> None:
    """Parse the header block back and require exactly the expected field names."""
    end = data.find(b"\r\n\r\n")
    block = data[:end]
    if _BAD_HEADER_BYTES.search(block.replace(b"\r\n", b"")):
        raise _fail(rendered, "a control character reached the headers; message refused")
    names = []
    for line in block.split(b"\r\n"):
        if len(line) > 998:
            raise _fail(rendered, "a header line exceeds 998 characters")
        if line[:1] in (b" ", b"\t"):
            continue
        names.append(line.partition(b":")[0].decode("ascii", "replace").lower())
    if names != [name.lower() for name in expected]:
        raise _fail(
            rendered,
            f"header set {names} differs from the expected {expected}: a value smuggled a header",
        )


def build_mime(
    rendered: RenderedMessage, *, message_id: str, date: dt.datetime | None = None
) -> bytes:
    """Return the message as standards-compliant MIME bytes (CRLF line ends), verified.

    Without ``date`` there is no Date header: that is the form the outbox stores, and
    the header is added when the message is sent.
    """
    try:
        values = _header_values(rendered, message_id, date)
        lines = [
            _address_header(rendered, "From", rendered.sender),
            _address_header(rendered, "To", rendered.to),
        ]
    except TemplateError as exc:
        raise _fail(rendered, exc.message) from exc
    lines += [encode_header(name, value) for name, value in values]
    lines.append("MIME-Version: 1.0")
    content_head, body = _content(rendered)
    head = ("\r\n".join(lines) + "\r\n").encode("ascii")
    data = b"".join([head, content_head, CRLF, body])
    expected = ["From", "To", *(name for name, _ in values), "MIME-Version", "Content-Type"]
    if b"Content-Transfer-Encoding" in content_head:
        expected.append("Content-Transfer-Encoding")
    _verify_header_block(rendered, data, expected)
    return data


def build_email_message(
    rendered: RenderedMessage, *, message_id: str, date: dt.datetime | None = None
) -> EmailMessage:
    """Return the message built with the stdlib ``EmailMessage`` API (slower; same structure)."""
    msg, values = _stdlib_message(rendered, message_id, date)
    expected = ["From", "To", *(name for name, _ in values), "MIME-Version", "Content-Type"]
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.compat32)
    names = sorted(k.lower() for k in parsed if k.lower() != "content-transfer-encoding")
    if names != sorted(n.lower() for n in expected):
        raise _fail(rendered, f"header set {names} differs from the expected {expected}")
    return msg


def _stdlib_message(
    rendered: RenderedMessage, message_id: str, date: dt.datetime | None
) -> tuple[EmailMessage, list[tuple[str, str]]]:
    try:
        values = _header_values(rendered, message_id, date)
        senders = []
        for field_name, mailbox in (("From", rendered.sender), ("To", rendered.to)):
            local, _, domain = _ascii_address(rendered, mailbox.address, field_name).rpartition("@")
            name = _display_name(rendered, mailbox, field_name)
            senders.append((field_name, Address(display_name=name, username=local, domain=domain)))
    except TemplateError as exc:
        raise _fail(rendered, exc.message) from exc
    msg = EmailMessage(policy=email.policy.default)
    for field_name, address in senders:
        msg[field_name] = address
    for name, value in values:
        msg[name] = value
    if rendered.text is not None:
        msg.set_content(rendered.text)
    html_part: MIMEPart | None = None
    if rendered.html is not None:
        if rendered.text is not None:
            msg.add_alternative(rendered.html, subtype="html")
            html_part = list(msg.iter_parts())[-1]
        else:
            msg.set_content(rendered.html, subtype="html")
            html_part = msg
    if rendered.html is None and rendered.text is None:
        raise _fail(rendered, "has neither an HTML nor a text body (is this an SMS template?)")
    for image in rendered.inline_images:
        assert html_part is not None
        maintype, _, subtype = image.content_type.partition("/")
        html_part.add_related(
            image.data,
            maintype,
            subtype,
            cid=f"<{image.cid}>",
            filename=image.filename,
            disposition="inline",
        )
    for attachment in rendered.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(attachment.data, maintype, subtype, filename=attachment.filename)
    return msg, values


def new_message_id(sender: Mailbox | str) -> str:
    """Return a fresh ``<...@domain>`` Message-ID using the sender's domain."""
    address = sender.address if isinstance(sender, Mailbox) else sender
    domain = address.rpartition("@")[2] or "bulkmail.invalid"
    return make_msgid(idstring="bm", domain=domain)
