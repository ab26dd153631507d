"""Templates: what a template is, compiling it once, and loading it from ``templates/<name>/``.

A template is a subject, an HTML body, an optional plain-text body and an optional
SMS body, with the images and attachments of its folder. Everything expensive (CSS
inlining, the text alternative generated from the HTML, reading images and
attachments, compiling Jinja in the sandbox of :mod:`~bulkmail_kernel.compose.sandbox`)
happens once when the :class:`Template` is built, so that rendering
(:mod:`~bulkmail_kernel.compose.render`) is then pure and fast. ``load_template``,
``list_templates`` and ``template_from_html`` are the ways in.
"""

from __future__ import annotations

import html as htmlmod
import logging
import mimetypes
import re
import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import css_inline
import html2text
import jinja2
import pandas as pd
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from bulkmail_kernel.compose.sandbox import _HTML_ENV, _PLAIN_ENV, _template_error
from bulkmail_kernel.config import templates_dir
from bulkmail_kernel.display import readable
from bulkmail_kernel.exceptions import TemplateError

log = logging.getLogger("bulkmail")

PARTS = ("subject", "html", "text", "sms")
METADATA_FILE = "template.toml"

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
_JINJA_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*)(["'])([^"'{}]+)\2""", re.IGNORECASE)


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
    return readable(pd.DataFrame(rows, columns=columns))
