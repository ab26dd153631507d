"""Reading the parts of a returned message: text, addresses, status codes, Message-IDs, VERP.

Shared by :mod:`.bounces` (delivery failures) and :mod:`.notices` (complaints,
auto-replies, JSON notifications). Everything here is pure: a parsed message or its
bytes in, plain values out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import Message as EmailMessage
from email.utils import getaddresses

from email_validator import EmailNotValidError, validate_email

from bulkmail_kernel.compose.headers import VERP_TAG

#: An RFC 3463 enhanced status code of a failure (class 4 or 5, subject 0-7), not part
#: of a version or a longer number: a letter before it ("engine v4.3.20") is no status.
ENHANCED = re.compile(r"(?<![\w.])([45])\.([0-7])\.(\d{1,3})(?![\d.])")
#: Any enhanced code, success included (a DSN Status field of a delivery report).
ENHANCED_ANY = re.compile(r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<![\d.])([45])[0-5]\d(?=[ -]|$)", re.MULTILINE)
MSGID = re.compile(r"(?im)^message-id:[ \t]*\r?\n?[ \t]*(<[^<>\s]+@[^<>\s]+>)")
ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: Lines that start the returned copy of the original in prose bounces.
COPY_STARTS = re.compile(
    r"(?im)^[ \t]*(?:-{2,}.*(?:copy|original|below this line|undelivered|returned|headers).*"
    r"|original message headers:.*|-+ ?original message ?-+"
    r"|_{5,}\s*$|.*this is a copy of the message.*"
    r"|received: from .*|return-path: .*)$"
)
_VERP = re.compile(r"^[^+@]+\+(?P<local>[^=@]+)=(?P<domain>[^@]+)@", re.IGNORECASE)
#: ``bounces+<Message-ID's unique part>@firm.sk``: what ``envelope_from`` writes with verp on.
_VERP_MESSAGE = re.compile(rf"^[^+@]+\+(?P<tag>{VERP_TAG.pattern})@", re.IGNORECASE)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?i)^{_LABEL}(?:\.{_LABEL})+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DAEMON_LOCAL = re.compile(
    r"(?i)^(mailer-daemon|postmaster|post_master|mail-daemon|mdaemon|maildaemon|mail\.daemon|"
    r"mailerdaemon|bounce|bounces|nobody|noreply-dmarc|dsn)(@|$)"
)
_DAEMON_NAME = re.compile(
    r"(?i)mailer[- ]?daemon|postmaster|mail delivery (sub)?system|delivery status|"
    r"mail administrator|mail delivery subsystem|returned mail"
)

#: Basic-code texts, most specific first: the enhanced code a reply without one means.
_TEXT_STATUS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), status)
    for pattern, status in (
        (r"mailbox (is )?full|over ?quota|quota exceeded|exceed\w* (the )?(storage|quota)", "2.2"),
        (r"(host|domain) (name )?(not found|unknown|does not exist)|no such domain", "1.2"),
        (
            r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
            r"invalid (recipient|mailbox|address)|recipient (address )?rejected|"
            r"mailbox (unavailable|not found)|not a valid mailbox|address rejected|"
            r"unrouteable|no mailbox|account (has been )?(disabled|closed|removed)",
            "1.1",
        ),
        (r"too (large|big)|size limit|exceeds? (the )?(maximum )?(message )?size", "3.4"),
        (r"spam|blocked|black ?list|block ?list|rbl|reputation|policy|dmarc|spf", "7.1"),
        (r"relay(ing)? (access )?denied|not permitted to relay", "7.1"),
        (r"timed? ?out|expired|too long|could not be delivered for", "4.7"),
        (r"connection refused|connect to .* failed|host unreachable", "4.1"),
    )
)


#: A notice's own words that its failure is permanent.
_PERMANENT_WORDS = re.compile(r"(?i)\bpermanent(ly)?\b")


def text_of(part: EmailMessage) -> str:
    """Return the decoded text of a leaf part (charset errors replaced, never raised)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        inner = part.get_payload()
        return inner if isinstance(inner, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def content_type(part: EmailMessage) -> str:
    """Return a part's ``type/subtype``, also when its parameters were folded without ``;``."""
    # "Content-Type: text/plain\n   charset=..." (OpenMail) reads as one odd type.
    found = re.match(r"[\w.+-]+/[\w.+-]+", part.get_content_type())
    return found.group().lower() if found else "text/plain"


def header_text(msg: EmailMessage, name: str) -> str:
    """Return a header decoded from RFC 2047 words; an unknown charset is read as UTF-8."""
    raw = msg.get(name)
    if raw is None:
        return ""
    value = str(raw)
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeDecodeError, ValueError, AssertionError):
        # An unknown charset or a broken encoded word: read the bytes as UTF-8.
        parts = []
        for chunk, _charset in decode_header(value):
            parts.append(chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk)
        return "".join(parts)


def explanation(msg: EmailMessage) -> str:
    """Return the human-readable explanation of a notification, without the returned original."""
    text = ""
    if msg.is_multipart():
        for part in msg.walk():
            kind = content_type(part)
            if kind in ("message/rfc822", "text/rfc822-headers", "message/delivery-status"):
                break
            # A multipart part whose boundary the parser could not read stays text.
            broken = part.get_content_maintype() == "multipart" and not part.is_multipart()
            if (kind in ("text/plain", "text/html") or broken) and not text:
                text = text_of(part)
                if kind == "text/plain" or broken:
                    break
    else:
        text = text_of(msg)
    if "<" in text and re.search(r"(?i)<(html|body|p|div|br|table)\b", text):
        text = re.sub(r"(?is)<(style|script)\b.*?</\1>", " ", text)
        text = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|h\d)>", "\n", text)
        text = re.sub(r"<[^>]+>", " ", text).replace("&nbsp;", " ")
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    cut = COPY_STARTS.search(text)
    # A separator in the first lines is a banner, not the returned copy.
    if cut and cut.start() > 0:
        return text[: cut.start()]
    return text


def returned_copy(msg: EmailMessage) -> EmailMessage | str | None:
    """Return the returned original: an attached message, its headers as text, or None."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, EmailMessage):
                return inner
        elif kind == "text/rfc822-headers":
            return text_of(part)
    return None


def original_recipients(msg: EmailMessage) -> list[str]:
    """Return the valid addresses in the To header of the returned original, if any."""
    copy = returned_copy(msg)
    values: list[str] = []
    if isinstance(copy, EmailMessage):
        values = [str(v) for v in copy.get_all("To", [])]
    elif isinstance(copy, str):
        values = re.findall(r"(?im)^to:[ \t]*(.*(?:\r?\n[ \t]+.*)*)", copy)
    found = []
    for _, address in getaddresses(values):
        norm = valid_address(address)
        if norm and norm not in found:
            found.append(norm)
    return found


def original_ids(msg: EmailMessage, raw: bytes) -> tuple[str, ...]:
    """Return the Message-IDs of the returned original, in order, never the notification's own."""
    found: list[str] = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, EmailMessage) and inner.get("Message-ID"):
                found.append(str(inner["Message-ID"]).strip())
        elif kind == "text/rfc822-headers":
            found += MSGID.findall(text_of(part))
    if not msg.is_multipart() or not found:
        # Prose bounces quote the original below a separator line.
        bodies = [msg] if not msg.is_multipart() else list(msg.walk())
        for part in bodies:
            if part.get_content_maintype() == "text":
                found += MSGID.findall(text_of(part))
    if not found:
        # A broken MIME structure (a boundary that does not match) hides the returned
        # headers inside another part: look through the whole body as text.
        body = raw[raw.find(b"\n\n") + 2 :] if b"\n\n" in raw else b""
        found += MSGID.findall(body.decode("utf-8", "replace"))
    own = str(msg.get("Message-ID", "")).strip()
    unique: list[str] = []
    for mid in found:
        mid = mid.strip()
        if mid != own and mid not in unique and len(mid) <= 300:
            unique.append(mid)
    # Our Message-IDs are looked up in one query: a mail loop quoting thousands is cut short.
    return tuple(unique[:20])


def reply_ids(msg: EmailMessage) -> tuple[str, ...]:
    """Return the Message-IDs a reply refers to (In-Reply-To, then References)."""
    found: list[str] = []
    for name in ("In-Reply-To", "References"):
        for mid in re.findall(r"<[^<>\s]+@[^<>\s]+>", str(msg.get(name, ""))):
            if mid not in found:
                found.append(mid)
    return tuple(found[:20])


def return_paths(msg: EmailMessage) -> Iterator[str]:
    """Yield the addresses a notification was delivered to: where a VERP tag would be."""
    for name in ("X-Original-To", "Delivered-To", "Envelope-To", "To"):
        for _, address in getaddresses([str(v) for v in msg.get_all(name, [])]):
            yield address


def verp_recipient(msg: EmailMessage) -> str | None:
    """Return the address a VERP return path (``bounces+jan=a.sk@``) carries, if any."""
    for address in return_paths(msg):
        match = _VERP.match(address)
        if match:
            return valid_address(f"{match['local']}@{match['domain']}")
    return None


def verp_tag(msg: EmailMessage) -> str | None:
    """Return the Message-ID tag a message-VERP return path (``bounces+<tag>@``) carries."""
    for address in return_paths(msg):
        match = _VERP_MESSAGE.match(address)
        if match:
            return match["tag"].lower()
    return None


def sender_address(msg: EmailMessage) -> str:
    """Return the From address, lower-cased ("" if none can be read)."""
    pairs = getaddresses([str(msg.get("From", ""))])
    return pairs[0][1].strip().lower() if pairs else ""


def from_a_daemon(msg: EmailMessage) -> bool:
    """Return whether the From names a mail system (MAILER-DAEMON, postmaster, ...)."""
    raw = str(msg.get("From", ""))
    pairs = getaddresses([raw])
    name, address = pairs[0] if pairs else ("", "")
    # ``From: MAILER-DAEMON <>`` has an empty address: the display name tells.
    return bool(
        _DAEMON_LOCAL.match(address)
        or _DAEMON_NAME.search(name)
        or _DAEMON_NAME.search(raw.split("<", 1)[0])
        or re.match(r"(?i)\s*mailer-daemon\b", raw)
    )


def valid_address(candidate: str) -> str | None:
    """Return ``candidate`` lower-cased, its domain in ASCII form, if it is a valid address."""
    text = candidate.strip().strip("<>\"'").strip().rstrip(".,;:")
    # A path (/var/spool/x@host) is never a recipient, whatever RFC 5322 allows.
    if not text or "@" not in text or text[0] in "/=" or len(text) > 254:
        return None
    if any(c in text for c in " \t\r\n{}[]\\"):
        return None
    try:
        result = validate_email(
            text, check_deliverability=False, allow_smtputf8=True, test_environment=True
        )
        local, _, domain = result.normalized.rpartition("@")
        # One form for a domain: the ASCII one (xn--...), as email_identity writes it.
        domain = result.ascii_domain or domain
    except EmailNotValidError as exc:
        # A reserved name (.invalid, .local) is still an address the bounce is about:
        # check the local part alone, and the domain's syntax.
        local, _, domain = text.rpartition("@")
        if "special-use" not in str(exc) or not _DOMAIN.match(domain):
            return None
        try:
            validate_email(f"{local}@example.com", check_deliverability=False)
        except EmailNotValidError:
            return None
    if "." not in domain:
        return None  # a host name alone (user@localhost) is never one of our recipients
    return f"{local}@{domain}".lower()


def enhanced_status(text: str) -> str | None:
    """Return the first enhanced failure code (``5.1.1``) in ``text``, if any."""
    match = ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def derived_status(text: str, *, permanent: bool | None = None) -> str | None:
    """Return the enhanced code a basic reply code and its words mean (``550 user unknown``)."""
    basic = _BASIC.search(text)
    klass = basic.group(1) if basic else None
    if klass is None and permanent is not None:
        klass = "5" if permanent else "4"
    if klass is None:
        return None
    for pattern, detail in _TEXT_STATUS:
        if pattern.search(text):
            if detail == "4.7":  # a delivery that expired in the queue
                # Giving up after temporary failures says nothing against the address:
                # with no reply code, an expiry is class 4 unless the notice itself
                # calls the failure permanent (Exim: "retry timeout exceeded").
                temporary = not basic and not _PERMANENT_WORDS.search(text)
                return f"{'4' if temporary else klass}.4.7"
            if detail == "4.1":
                return f"{klass}.4.1"
            return f"{klass}.{detail}"
    return f"{klass}.0.0"


def clean(text: str) -> str:
    """Return text on one line without control characters (PostgreSQL refuses NUL)."""
    return " ".join(_CONTROL.sub(" ", text).split())[:500]


def diagnostic_line(text: str, needle: str) -> str:
    """Return the first line of ``text`` holding ``needle``, cleaned ("" if none)."""
    for line in text.splitlines():
        if needle and needle in line:
            return clean(line)
    return ""
