"""Templates: loading from ``templates/<name>/``, sandboxed rendering, per-recipient checks.

A template is a subject, an HTML body, an optional plain-text body and an optional
SMS body. Everything expensive (CSS inlining, the text alternative generated from
the HTML, reading images and attachments, compiling Jinja) happens once when the
:class:`Template` is built; :func:`render` is then pure and fast.
"""

from __future__ import annotations

import datetime as dt
import html as htmlmod
import logging
import math
import mimetypes
import re
import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
import html2text
import jinja2
import numpy as np
import pandas as pd
from jinja2 import meta, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from bulkmail_kernel.config import (
    DEFAULT_LANGUAGE,
    SUPPORTED_LANGUAGES,
    local_timezone,
    templates_dir,
)
from bulkmail_kernel.exceptions import TemplateError

log = logging.getLogger("bulkmail")

PARTS = ("subject", "html", "text", "sms")
METADATA_FILE = "template.toml"
#: Variables SendPulse can personalise by itself; anything else must be rendered by us.
SENDPULSE_VARIABLES = frozenset({"name", "patronymic", "surname"})
#: Placeholder URL used when checking or previewing without a real unsubscribe link.
PREVIEW_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe/preview"

_METADATA_KEYS = {
    "name",
    "language",
    "description",
    "required",
    "channel",
    "subject",
    "html",
    "text",
    "sms",
    "attachments",
    "sample",
    "send_as_is",
}
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?.*?\?=", re.DOTALL)
_HEADER_BREAKERS = re.compile(r"[\r\n\x00]+")
_JINJA_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*)(["'])([^"'{}]+)\2""", re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Mailbox:
    """A display name and an e-mail address (or a phone number for SMS)."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True)
class Attachment:
    """A file attached to every message of a template."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class InlineImage:
    """An image from the template folder, embedded as a ``cid:`` part."""

    cid: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class RenderedMessage:
    """One recipient's message, ready to be turned into MIME bytes or an SMS."""

    subject: str
    html: str | None
    text: str | None
    to: Mailbox
    sender: Mailbox
    attachments: tuple[Attachment, ...] = ()
    inline_images: tuple[InlineImage, ...] = ()
    #: Extra headers in order, e.g. List-Unsubscribe; names are fixed by us, values cleaned.
    headers: tuple[tuple[str, str], ...] = ()
    sms: str | None = None
    template_name: str = ""
    #: Who this is for, in words, for error messages ("contact point 12 <a@b.sk>").
    recipient: str = ""
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class _Part:
    """One compiled part; ``original`` keeps the pre-inlining source for error line numbers."""

    compiled: jinja2.Template
    source: str
    original: jinja2.Template | None = None


@dataclass(frozen=True)
class _Compiled:
    parts: dict[str, _Part]
    inline_images: tuple[InlineImage, ...]
    attachments: tuple[Attachment, ...]
    #: True when the text alternative could not be derived at compile time.
    text_from_html_each_time: bool


@dataclass(frozen=True, eq=False)
class Template:
    """A message template; building one compiles it (once) and reads its files (once).

    ``html`` is the HTML source, ``text``/``sms`` optional plain sources, ``folder`` the
    directory relative image ``src`` and attachment paths are resolved against.
    ``send_as_is`` keeps pasted HTML untouched: no CSS inlining, no generated text, no
    embedded images (Jinja personalisation still applies).
    """

    name: str
    subject: str
    html: str | None = None
    text: str | None = None
    sms: str | None = None
    language: str | None = None
    description: str = ""
    required: tuple[str, ...] = ()
    channel: str = "email"
    folder: Path | None = None
    attachments: tuple[Path, ...] = ()
    send_as_is: bool = False
    sample: Mapping[str, Any] = field(default_factory=dict)
    _compiled: _Compiled = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.channel not in ("email", "sms"):
            raise TemplateError(
                f"template {self.name!r}: channel {self.channel!r} is not 'email' or 'sms'",
                template=self.name,
            )
        if self.channel == "email" and not self.html and not self.text:
            raise TemplateError(
                f"template {self.name!r}: an e-mail template needs an HTML or a text body",
                template=self.name,
            )
        if self.channel == "sms" and not self.sms:
            raise TemplateError(
                f"template {self.name!r}: an SMS template needs an sms body", template=self.name
            )
        object.__setattr__(self, "required", tuple(self.required))
        object.__setattr__(self, "attachments", tuple(Path(p) for p in self.attachments))
        object.__setattr__(self, "_compiled", _compile(self))

    def variables(self) -> set[str]:
        """Return every variable the template's parts use but do not define themselves."""
        return set().union(*_undeclared(self).values())


# --------------------------------------------------------------------------- filters


def _plain(value: Any) -> Any:
    """Turn a pandas/numpy cell into a plain Python value (NaN/NA/NaT become None)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.datetime64):
        stamp = pd.Timestamp(value)
        return None if stamp is pd.NaT else stamp.to_pydatetime()
    if isinstance(value, pd.Timedelta):
        return value.to_pytimedelta()
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def row_to_context(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """Return a recipient row as a plain dict, with pandas NaN/NA/Timestamp made None/datetime."""
    items = row.items()
    return {str(k): _plain(v) for k, v in items}


def _is_empty(value: Any) -> bool:
    if value is None or isinstance(value, jinja2.Undefined):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return value is pd.NA or value is pd.NaT


def default_filter(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Return ``default_value`` when the value is undefined, None, NaN or an empty string."""
    if _is_empty(value) or (boolean and not value):
        return default_value
    return value


def _language(ctx: Context | None, explicit: str | None) -> str:
    if explicit:
        return explicit
    if ctx is not None:
        for key in ("template_language", "language"):
            value = ctx.get(key)
            if isinstance(value, str) and value in SUPPORTED_LANGUAGES:
                return value
    return DEFAULT_LANGUAGE


def salutation(
    row: Mapping[str, Any], language: str | None = None, gender: str | None = None
) -> str:
    """Return a formal greeting for a recipient by language and gender, neutral when unknown."""
    if not isinstance(row, Mapping):
        raise TypeError("salutation expects the recipient row: write {{ recipient | salutation }}")
    lang = language or DEFAULT_LANGUAGE
    first = (row.get("first_name") or "").strip() if not _is_empty(row.get("first_name")) else ""
    last = (row.get("last_name") or "").strip() if not _is_empty(row.get("last_name")) else ""
    patr = (row.get("patronymic") or "").strip() if not _is_empty(row.get("patronymic")) else ""
    sex = gender or row.get("gender")
    sex = sex if sex in ("m", "f") else None
    full = " ".join(p for p in (first, last) if p)
    if lang == "ru":
        given = " ".join(p for p in (first, patr) if p) or full
        if sex == "m" and given:
            return f"Уважаемый {given}"
        if sex == "f" and given:
            return f"Уважаемая {given}"
        return f"Здравствуйте, {given}" if given else "Здравствуйте"
    if lang == "en":
        if sex and last:
            return f"Dear {'Mr' if sex == 'm' else 'Ms'} {last}"
        return f"Dear {full}" if full else "Dear customer"
    if lang == "cs":
        # The Czech vocative (Nováku) needs a morphology table; the nominative is accepted.
        if sex and last:
            return f"Vážený pane {last}" if sex == "m" else f"Vážená paní {last}"
        return f"Vážená/ý {full}" if full else "Dobrý den"
    if sex and last:
        return f"Vážený pán {last}" if sex == "m" else f"Vážená pani {last}"
    return f"Vážená/ý {full}" if full else "Dobrý deň"


@pass_context
def _salutation_filter(
    ctx: Context, row: Mapping[str, Any], language: str | None = None, gender: str | None = None
) -> str:
    return salutation(row, _language(ctx, language), gender)


_MONTHS_EN = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)


def format_date(value: Any, language: str | None = None, fmt: str | None = None) -> str:
    """Return a date as the language writes it: sk/cs 1. 7. 2025, ru 01.07.2025, en 1 July 2025."""
    value = _plain(value)
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # Stored times are UTC; the reader lives in the analyst's zone.
        value = value.astimezone(ZoneInfo(local_timezone()))
    if not isinstance(value, dt.date):
        raise TypeError(f"date filter got {type(value).__name__} {value!r}, not a date")
    if fmt:
        return value.strftime(fmt)
    lang = language or DEFAULT_LANGUAGE
    if lang == "ru":
        return f"{value.day:02d}.{value.month:02d}.{value.year}"
    if lang == "en":
        return f"{value.day} {_MONTHS_EN[value.month - 1]} {value.year}"
    return f"{value.day}. {value.month}. {value.year}"


@pass_context
def _date_filter(
    ctx: Context, value: Any, fmt: str | None = None, language: str | None = None
) -> str:
    return format_date(value, _language(ctx, language), fmt)


def _finalize(value: Any) -> Any:
    # None (from NaN cells) must print as nothing, not as the word "None".
    return "" if value is None else value


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with dict keys looked up first (``article.title`` on a row dict)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        # The stock lookup tries getattr first and pays for an AttributeError on every
        # dict access in a loop; a dict key is data, never an attribute, so it is safe.
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _make_env(autoescape: bool) -> SandboxedEnvironment:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["default"] = default_filter
    env.filters["d"] = default_filter
    env.filters["salutation"] = _salutation_filter
    env.filters["date"] = _date_filter
    return env


_HTML_ENV = _make_env(autoescape=True)
_PLAIN_ENV = _make_env(autoescape=False)


# --------------------------------------------------------------------------- errors


def _error_line(exc: BaseException, filename: str) -> int | None:
    line = getattr(exc, "lineno", None)
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _template_error(
    exc: Exception, template: str, part: str, *, recipient: str = "", line: int | None = None
) -> TemplateError:
    variable = None
    if isinstance(exc, jinja2.UndefinedError):
        match = _UNDEFINED_NAME.search(str(exc))
        variable = (match.group(1) or match.group(2)) if match else None
        what = f"variable {variable!r} is undefined"
        todo = (
            f"add a {variable!r} column to the recipients or pass it in values=..., "
            f"or write {{{{ {variable} | default('') }}}}"
        )
    elif isinstance(exc, SecurityError):
        what = f"sandbox violation: {exc}"
        todo = "templates may only use plain values, filters and loops"
    elif isinstance(exc, jinja2.TemplateSyntaxError):
        what = f"syntax error: {exc.message}"
        todo = "fix the template text"
    else:
        what = f"{type(exc).__name__}: {exc}"
        todo = "check the values this line uses"
    where = f"template {template!r}, {part}" + (f", line {line}" if line else "")
    who = f" (recipient {recipient})" if recipient else ""
    return TemplateError(
        f"{where}: {what}{who}: {todo}",
        template=template,
        part=part,
        line=line,
        variable=variable,
        recipient=recipient or None,
        reason=what,
    )


# --------------------------------------------------------------------------- compiling


def _compile_part(
    env: SandboxedEnvironment, template: str, part: str, source: str
) -> jinja2.Template:
    filename = f"<{template}:{part}>"
    try:
        code = env.compile(source, name=f"{template}:{part}", filename=filename)
    except jinja2.TemplateSyntaxError as exc:
        raise _template_error(exc, template, part, line=exc.lineno) from exc
    return env.template_class.from_code(env, code, env.make_globals(None))


def _protect(source: str) -> tuple[str, list[str]]:
    """Swap Jinja constructs for placeholders the HTML parser keeps in place."""
    constructs: list[str] = []
    out: list[str] = []
    in_tag = False
    pos = 0
    for match in _JINJA_CONSTRUCT.finditer(source):
        chunk = source[pos : match.start()]
        for ch in chunk:
            if ch == "<":
                in_tag = True
            elif ch == ">":
                in_tag = False
        out.append(chunk)
        index = len(constructs)
        constructs.append(match.group(0))
        # Block tags between table rows would be foster-parented as text; comments stay put.
        if not in_tag and not match.group(0).startswith("{{"):
            out.append(f"<!--bmJ{index}-->")
        else:
            out.append(f"bmJ{index}x")
        pos = match.end()
    out.append(source[pos:])
    return "".join(out), constructs


def _restore(text: str, constructs: list[str]) -> str:
    def put(match: re.Match[str]) -> str:
        return constructs[int(match.group(1) or match.group(2) or match.group(3))]

    return re.sub(r"<!--bmJ(\d+)-->|&lt;!--bmJ(\d+)--&gt;|bmJ(\d+)x", put, text)


_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def _inline_css(template: str, source: str) -> str:
    protected, constructs = _protect(source)
    try:
        inlined = _INLINER.inline(protected)
    except ValueError as exc:
        raise TemplateError(
            f"template {template!r}, html: CSS cannot be inlined: {exc}", template=template
        ) from exc
    restored = _restore(inlined, constructs)
    if _JINJA_CONSTRUCT.findall(restored) != constructs:
        # The HTML parser moved a Jinja tag (e.g. text directly inside <table>): keep the source.
        log.warning("template %r: CSS left un-inlined because inlining moved Jinja tags", template)
        return source
    return restored


def _html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    # Layout tables are for positioning; as Markdown tables they would read as noise.
    converter.ignore_tables = True
    return converter.handle(html).strip() + "\n"


def _text_source_from_html(source: str) -> str:
    protected, constructs = _protect(source)
    # html2text drops comments, so every construct travels as a text token here.
    protected = re.sub(r"<!--bmJ(\d+)-->", r"bmJ\1x", protected)
    return _restore(_html_to_text(protected), constructs)


def _read(path: Path, template: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TemplateError(
            f"template {template!r}: cannot read {path}: {exc.strerror}", template=template
        ) from exc


def decode_utf8(data: bytes | str, what: str) -> str:
    """Return text decoded as UTF-8 (BOM dropped), or raise TemplateError saying it is not UTF-8."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TemplateError(
                f"{what}: text is not valid UTF-8 ({exc.reason} at character {exc.start}): "
                "re-save it as UTF-8",
                reason="not utf-8",
            ) from exc
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise TemplateError(
            f"{what}: bytes are not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "re-save the file as UTF-8 (in most editors: Save as… › Encoding › UTF-8)",
            reason="not utf-8",
        ) from exc


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _embed_images(template: Template, source: str) -> tuple[str, tuple[InlineImage, ...]]:
    images: dict[str, InlineImage] = {}
    folder = template.folder

    def swap(match: re.Match[str]) -> str:
        src = match.group(3).strip()
        if folder is None or re.match(r"^[a-z][a-z0-9+.-]*:|^//", src, re.IGNORECASE):
            return match.group(0)
        path = (folder / src).resolve()
        if folder.resolve() not in path.parents:
            raise TemplateError(
                f"template {template.name!r}, html: image {src!r} is outside the template folder",
                template=template.name,
            )
        if src not in images:
            data = _read(path, template.name)
            cid = f"{path.stem}.{zlib.crc32(data):08x}@bulkmail"
            images[src] = InlineImage(cid, path.name, _content_type(path), data)
        return f"{match.group(1)}{match.group(2)}cid:{images[src].cid}{match.group(2)}"

    return _IMG_SRC.sub(swap, source), tuple(images.values())


def _compile(template: Template) -> _Compiled:
    name = template.name
    parts: dict[str, _Part] = {}
    parts["subject"] = _Part(
        _compile_part(_PLAIN_ENV, name, "subject", template.subject), template.subject
    )
    inline_images: tuple[InlineImage, ...] = ()
    text_each_time = False
    if template.html:
        source = decode_utf8(template.html, f"template {name!r}, html")
        original = _compile_part(_HTML_ENV, name, "html", source)
        if template.send_as_is:
            parts["html"] = _Part(original, source)
        else:
            processed, inline_images = _embed_images(template, source)
            processed = _inline_css(name, processed)
            compiled = _compile_part(_HTML_ENV, name, "html", processed)
            parts["html"] = _Part(compiled, processed, original)
            if not template.text:
                text_source = _text_source_from_html(source)
                try:
                    parts["text"] = _Part(
                        _compile_part(_PLAIN_ENV, name, "text", text_source), text_source
                    )
                except TemplateError:
                    log.warning("template %r: text alternative is generated per message", name)
                    text_each_time = True
    if template.text:
        parts["text"] = _Part(_compile_part(_PLAIN_ENV, name, "text", template.text), template.text)
    if template.sms:
        parts["sms"] = _Part(_compile_part(_PLAIN_ENV, name, "sms", template.sms), template.sms)
    attachments = []
    for path in template.attachments:
        full = path if path.is_absolute() or template.folder is None else template.folder / path
        attachments.append(Attachment(full.name, _content_type(full), _read(full, name)))
    return _Compiled(parts, inline_images, tuple(attachments), text_each_time)


def _undeclared(template: Template) -> dict[str, set[str]]:
    found = {}
    for part in PARTS:
        source = getattr(template, part)
        if source:
            env = _HTML_ENV if part == "html" else _PLAIN_ENV
            found[part] = set(meta.find_undeclared_variables(env.parse(source)))
    return found


# --------------------------------------------------------------------------- loading


def template_from_html(
    html: str | bytes,
    subject: str = "",
    text: str | None = None,
    send_as_is: bool = False,
    *,
    name: str = "pasted",
    language: str | None = None,
    attachments: Iterable[str | Path] = (),
    folder: str | Path | None = None,
    sms: str | None = None,
) -> Template:
    """Build a template from pasted HTML (UTF-8 only); ``send_as_is`` skips all HTML processing."""
    source = decode_utf8(html, f"template {name!r}, pasted HTML")
    return Template(
        name=name,
        subject=subject,
        html=source,
        text=text,
        sms=sms,
        language=language,
        attachments=tuple(Path(p) for p in attachments),
        folder=Path(folder) if folder is not None else None,
        send_as_is=send_as_is,
    )


def _metadata(folder: Path) -> dict[str, Any]:
    meta_path = folder / METADATA_FILE
    try:
        data = tomllib.loads(decode_utf8(_read(meta_path, folder.name), str(meta_path)))
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{meta_path}: not valid TOML: {exc}", template=folder.name) from exc
    unknown = set(data) - _METADATA_KEYS
    if unknown:
        raise TemplateError(
            f"{meta_path}: unknown keys {sorted(unknown)}; allowed: {sorted(_METADATA_KEYS)}",
            template=folder.name,
        )
    return data


def _stamp(folder: Path) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


@lru_cache(maxsize=64)
def _load_folder(folder: Path, stamp: tuple[tuple[str, int], ...]) -> Template:
    data = _metadata(folder)
    name = str(data.get("name", folder.name))

    def body(key: str, default_file: str | None) -> str | None:
        file_name = data.get(key, default_file)
        if file_name is None or not (folder / file_name).exists():
            if key in data:
                raise TemplateError(
                    f"template {name!r}: {key} file {file_name!r} not found in {folder}",
                    template=name,
                )
            return None
        return decode_utf8(
            _read(folder / file_name, name), f"template {name!r}, {folder / file_name}"
        )

    channel = str(data.get("channel", "email"))
    return Template(
        name=name,
        subject=str(data.get("subject", "")),
        html=body("html", "body.html"),
        text=body("text", "body.txt"),
        sms=body("sms", "sms.txt"),
        language=data.get("language"),
        description=str(data.get("description", "")),
        required=tuple(data.get("required", ())),
        channel=channel,
        folder=folder,
        attachments=tuple(Path(p) for p in data.get("attachments", ())),
        send_as_is=bool(data.get("send_as_is", False)),
        sample=dict(data.get("sample", {})),
    )


def load_template(name_or_path: str | Path) -> Template:
    """Load a template by name (a folder under ``templates/``) or from a folder path."""
    path = Path(name_or_path)
    if not path.exists() and len(path.parts) == 1:
        path = templates_dir() / str(name_or_path)
    if path.is_file() and path.name == METADATA_FILE:
        path = path.parent
    if path.is_file() and path.suffix.lower() in (".html", ".htm"):
        source = decode_utf8(path.read_bytes(), str(path))
        title = re.search(r"<title>(.*?)</title>", source, re.IGNORECASE | re.DOTALL)
        subject = htmlmod.unescape(title.group(1).strip()) if title else path.stem
        return template_from_html(source, subject, name=path.stem, folder=path.parent)
    if not (path / METADATA_FILE).is_file():
        known = ", ".join(list_templates()["name"]) if templates_dir().is_dir() else "none"
        raise TemplateError(
            f"template {str(name_or_path)!r} not found: no {METADATA_FILE} in {path}; "
            f"known templates: {known}",
            template=str(name_or_path),
        )
    folder = path.resolve()
    return _load_folder(folder, _stamp(folder))


def list_templates(directory: str | Path | None = None) -> pd.DataFrame:
    """Return the templates under ``templates/`` as a DataFrame (name, language, channel, ...)."""
    base = Path(directory) if directory is not None else templates_dir()
    rows = []
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if not (folder / METADATA_FILE).is_file():
            continue
        try:
            data = _metadata(folder)
        except TemplateError as exc:
            log.warning("skipping template folder %s: %s", folder, exc.message)
            continue
        rows.append(
            {
                "name": str(data.get("name", folder.name)),
                "language": data.get("language"),
                "channel": data.get("channel", "email"),
                "description": data.get("description", ""),
                "required": ", ".join(data.get("required", ())),
                "folder": str(folder),
            }
        )
    columns = ["name", "language", "channel", "description", "required", "folder"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- rendering


def clean_header_value(
    value: str, *, field_name: str, recipient: str = "", template: str = ""
) -> str:
    """Return a header value with CR/LF/NUL removed; refuse RFC 2047 encoded-word syntax."""
    cleaned = _HEADER_BREAKERS.sub(" ", value).strip()
    if _ENCODED_WORD.search(cleaned):
        # Python 3.11's header folder decodes such words and can emit a real line break.
        who = f" for recipient {recipient}" if recipient else ""
        raise TemplateError(
            f"{field_name}{who} contains RFC 2047 encoded-word syntax {cleaned!r}: refused, "
            "because it could smuggle a line break into the headers; fix the value",
            template=template or None,
            recipient=recipient or None,
            field=field_name,
        )
    return cleaned


def _recipient_label(ctx: Mapping[str, Any]) -> str:
    bits = []
    if ctx.get("contact_point_id") is not None:
        bits.append(f"contact point {ctx['contact_point_id']}")
    elif ctx.get("contact_id") is not None:
        bits.append(f"contact {ctx['contact_id']}")
    if ctx.get("address"):
        bits.append(f"<{ctx['address']}>")
    return " ".join(bits) or "(no address)"


def _parse_sender(sender: str | Mailbox | None) -> Mailbox:
    if sender is None:
        return Mailbox("", "")
    if isinstance(sender, Mailbox):
        return sender
    return _parse_sender_text(sender)


@lru_cache(maxsize=64)
def _parse_sender_text(sender: str) -> Mailbox:
    name, address = parseaddr(sender)
    if not address:
        raise TemplateError(f"sender {sender!r} is not an address like 'Firm <info@firm.sk>'")
    return Mailbox(name, address)


def build_context(
    template: Template,
    row: Mapping[str, Any] | pd.Series,
    values: Mapping[str, Any] | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """Return the Jinja context: campaign values, overridden by the recipient's non-empty cells."""
    recipient = row_to_context(row)
    # Campaign values are defaults; a recipient's own non-empty cell is more specific.
    ctx = {k: _plain(v) for k, v in (values or {}).items()}
    ctx.update({k: v for k, v in recipient.items() if v is not None or k not in ctx})
    # SendPulse's own variable names, so one template renders both locally and there.
    ctx.setdefault("name", recipient.get("first_name"))
    ctx.setdefault("surname", recipient.get("last_name"))
    ctx.setdefault("patronymic", None)
    ctx["recipient"] = recipient
    ctx["unsubscribe_url"] = unsubscribe_url
    ctx["template_language"] = template.language or recipient.get("language") or DEFAULT_LANGUAGE
    return ctx


def _render_part(
    template: Template, part: str, ctx: Mapping[str, Any], recipient: str
) -> str | None:
    compiled = template._compiled.parts.get(part)
    if compiled is None:
        return None
    try:
        return compiled.compiled.render(ctx)
    except Exception as exc:
        line = _error_line(exc, f"<{template.name}:{part}>")
        if compiled.original is not None:
            # Inlining reflows lines: render the source as written to report its line number.
            try:
                compiled.original.render(ctx)
            except Exception as again:
                line = _error_line(again, f"<{template.name}:{part}>")
        raise _template_error(exc, template.name, part, recipient=recipient, line=line) from exc


def render(
    template: Template,
    row: Mapping[str, Any] | pd.Series,
    *,
    values: Mapping[str, Any] | None = None,
    unsubscribe_url: str | None = None,
    sender: str | Mailbox | None = None,
    unsubscribe_mailto: str | None = None,
) -> RenderedMessage:
    """Render a template for one recipient row (pure: no I/O).

    Args:
        template: a :class:`Template` from :func:`load_template` or :func:`template_from_html`.
        row: the recipient (a row of the contacts frame, or any mapping).
        values: campaign-wide values (event date, venue, ...); a non-empty row cell of the
            same name wins, so values act as defaults.
        unsubscribe_url: the recipient's one-click unsubscribe URL (``{{ unsubscribe_url }}``).
        sender: the From address, ``"Firm <info@firm.sk>"`` or a :class:`Mailbox`.
        unsubscribe_mailto: an optional ``mailto:`` address for List-Unsubscribe.

    """
    ctx = build_context(template, row, values, unsubscribe_url)
    who = _recipient_label(ctx)
    subject = _render_part(template, "subject", ctx, who) or ""
    html = _render_part(template, "html", ctx, who)
    text = _render_part(template, "text", ctx, who)
    if text is None and html is not None and template._compiled.text_from_html_each_time:
        text = _html_to_text(html)
    elif text is not None and not template.text:
        # Loops in generated text leave runs of blank lines behind.
        text = _BLANK_RUNS.sub("\n\n", text)
    sms = _render_part(template, "sms", ctx, who)
    subject = clean_header_value(
        subject, field_name="subject", recipient=who, template=template.name
    )
    rec = ctx["recipient"]
    display = " ".join(str(rec[k]) for k in ("first_name", "last_name") if rec.get(k))
    to = Mailbox(
        clean_header_value(
            display, field_name="recipient name", recipient=who, template=template.name
        ),
        _HEADER_BREAKERS.sub("", str(rec.get("address") or "")).strip(),
    )
    headers: list[tuple[str, str]] = []
    targets = []
    if unsubscribe_url:
        url = _HEADER_BREAKERS.sub("", unsubscribe_url).strip()
        if not re.match(r"^https?://[^\s<>]+$", url):
            raise TemplateError(
                f"unsubscribe URL {url!r} for recipient {who} is not an http(s) URL without spaces",
                recipient=who,
            )
        targets.append(f"<{url}>")
    if unsubscribe_mailto:
        mailto = _HEADER_BREAKERS.sub("", unsubscribe_mailto).strip().removeprefix("mailto:")
        targets.append(f"<mailto:{mailto}>")
    if targets:
        headers.append(("List-Unsubscribe", ", ".join(targets)))
    if unsubscribe_url:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return RenderedMessage(
        subject=subject,
        html=html,
        text=text,
        to=to,
        sender=_parse_sender(sender),
        attachments=template._compiled.attachments,
        inline_images=template._compiled.inline_images,
        headers=tuple(headers),
        sms=sms,
        template_name=template.name,
        recipient=who,
        unsubscribe_url=unsubscribe_url,
    )


# --------------------------------------------------------------------------- checks

_CHECK_COLUMNS = ["row", "contact_point_id", "address", "part", "line", "variable", "error"]


def check_template(
    template: Template,
    frame: pd.DataFrame,
    *,
    values: Mapping[str, Any] | None = None,
    provider: str | None = None,
) -> pd.DataFrame:
    """Render for every recipient and return the ones that fail and why (empty = all fine)."""
    problems: list[dict[str, Any]] = []
    if provider is not None:
        if provider.lower() != "sendpulse":
            raise TemplateError(
                f"unknown provider {provider!r}: the only provider rule is 'sendpulse'"
            )
        allowed = ", ".join(sorted(SENDPULSE_VARIABLES))
        for part, names in _undeclared(template).items():
            for variable in sorted(names - SENDPULSE_VARIABLES):
                problems.append(
                    {
                        "part": part,
                        "variable": variable,
                        "error": f"SendPulse personalises only {allowed}; "
                        f"{variable!r} would be sent literally",
                    }
                )
    for index, record in zip(frame.index, frame.to_dict("records"), strict=True):
        who = {
            "row": index,
            "contact_point_id": record.get("contact_point_id"),
            "address": record.get("address"),
        }
        ctx = build_context(template, record, values, PREVIEW_UNSUBSCRIBE_URL)
        for variable in template.required:
            if _is_empty(ctx.get(variable)):
                problems.append(
                    {
                        **who,
                        "part": "required",
                        "variable": variable,
                        "error": f"required value {variable!r} is empty",
                    }
                )
        try:
            render(template, record, values=values, unsubscribe_url=PREVIEW_UNSUBSCRIBE_URL)
        except TemplateError as exc:
            problems.append(
                {
                    **who,
                    "part": exc.fields.get("part") or exc.fields.get("field"),
                    "line": exc.fields.get("line"),
                    "variable": exc.fields.get("variable"),
                    "error": exc.fields.get("reason") or exc.message,
                }
            )
    return pd.DataFrame(problems, columns=_CHECK_COLUMNS)
