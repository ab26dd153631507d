"""What a contacts file really is, from its first bytes, whatever its name says.

A workbook saved as ``contacts.csv``, a PDF or a zip renamed by hand, an "Excel"
export that is an HTML page: read as CSV, each failed with "neither UTF-8 nor
cp1250 nor cp1251" (issue 14), which says nothing about the file. ``sniff`` names
what the bytes are, so :mod:`bulkmail_kernel.contacts.sources` can read it for what
it is or say what to do with it.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: How many bytes are looked at: enough for every signature and a text/binary guess.
HEAD_BYTES = 8192

_OFFICE_ADVICE = "open it in Excel or LibreOffice and save it as .xlsx or as CSV UTF-8"


@dataclass(frozen=True)
class FileKind:
    """What a file is: a short ``kind``, how to say it, and what to do to import it."""

    kind: str
    description: str
    advice: str


#: What to do with any picture named as a contacts file.
_IMAGE = "an image holds no contacts: export the list as CSV or Excel"

#: (leading bytes, kind, description, advice), first match wins.
_SIGNATURES: tuple[tuple[bytes, str, str, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "xls",
     "an old-format Microsoft Office file (an Excel 97-2003 .xls workbook, or a Word .doc)",
     _OFFICE_ADVICE),
    (b"%PDF-", "pdf", "a PDF document",
     "a PDF holds no table bulkmail can read: export the list as CSV or Excel from the "
     "program that made the PDF"),
    (b"\x1f\x8b", "gzip", "a gzip-compressed file", "decompress it (gunzip) and import the "
     "file inside"),
    (b"\xfd7zXZ\x00", "xz", "an xz-compressed file", "decompress it and import the file inside"),
    (b"(\xb5/\xfd", "zstd", "a zstd-compressed file", "decompress it and import the file inside"),
    (b"7z\xbc\xaf'\x1c", "7z", "a 7-Zip archive", "extract it and import the file inside"),
    (b"Rar!\x1a\x07", "rar", "a RAR archive", "extract it and import the file inside"),
    (b"SQLite format 3\x00", "sqlite", "a SQLite database",
     "import a table of it by its URL: import_contacts('sqlite:///<path>', table='...')"),
    (b"\x89PNG\r\n\x1a\n", "image", "a PNG image", _IMAGE),
    (b"\xff\xd8\xff", "image", "a JPEG image", _IMAGE),
    (b"GIF87a", "image", "a GIF image", _IMAGE),
    (b"GIF89a", "image", "a GIF image", _IMAGE),
    (b"II*\x00", "image", "a TIFF image", _IMAGE),
    (b"MM\x00*", "image", "a TIFF image", _IMAGE),
    (b"{\\rtf", "rtf", "an RTF document", "save the table as CSV UTF-8 or .xlsx"),
    (b"\x7fELF", "binary", "a program (ELF executable)", "give the contacts file instead"),
)  # fmt: skip

_ZIP_PARTS = (
    ("xl/workbook.xml", "xlsx", "an Excel workbook (xlsx)", ""),
    ("xl/workbook.bin", "xlsb", "an Excel binary workbook (xlsb)", _OFFICE_ADVICE),
    ("word/document.xml", "docx", "a Word document (docx)",
     "copy the table into Excel and save it as .xlsx or as CSV UTF-8"),
    ("ppt/presentation.xml", "pptx", "a PowerPoint presentation (pptx)",
     "export the list as CSV or Excel from where it came from"),
)  # fmt: skip

_HTML = re.compile(rb"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|table)\b", re.I | re.S)


def sniff(path: Path) -> FileKind | None:
    """Return what ``path`` is when it is not plain text (None: text, perhaps a CSV)."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return None  # a byte order mark: text in UTF-8, UTF-16 or UTF-32
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(path)
    for magic, kind, description, advice in _SIGNATURES:
        if head.startswith(magic):
            return FileKind(kind, description, advice)
    if re.match(rb"BZh[1-9]1AY&SY", head):
        return FileKind(
            "bzip2", "a bzip2-compressed file", "decompress it and import the file inside"
        )
    if _HTML.match(head):
        return FileKind(
            "html",
            "an HTML page (some programs label such an export 'Excel')",
            _OFFICE_ADVICE,
        )
    if head.lstrip().startswith(b"<?xml"):
        if b"urn:schemas-microsoft-com:office:spreadsheet" in head:
            return FileKind("xml-spreadsheet", "an Excel 2003 XML spreadsheet", _OFFICE_ADVICE)
        return FileKind(
            "xml",
            "an XML file",
            "if it is a contacts XML (docs/contacts-xml.md), give it the .xml extension",
        )
    if _looks_binary(head):
        return FileKind(
            "binary",
            "a binary file",
            "it is not text; export the contacts as CSV UTF-8 or as .xlsx from the program "
            "that made it",
        )
    return None


def _looks_binary(head: bytes) -> bool:
    """Say whether bytes are not text: control bytes everywhere, not a stray one in a cell."""
    if utf16_without_bom(head) is not None:
        return False
    # Text has tabs and line ends; a binary format has bytes 0-8 and 14-31 all over it
    # (about one in ten of random bytes), while a CSV may carry a stray NUL in a cell,
    # which the importer cleans and reports.
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    return controls > 0.05 * len(head)


def utf16_without_bom(head: bytes) -> str | None:
    """Return "utf-16-le" or "utf-16-be" for UTF-16 text without a BOM, else None.

    Latin and Cyrillic text in UTF-16 has a zero in every other byte (the high byte of
    ASCII) and nearly none in the others; a binary file has zeros anywhere.
    """
    sample = head[: len(head) - len(head) % 2]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    half = len(sample) // 2
    zeros_even, zeros_odd = even.count(0), odd.count(0)
    if zeros_odd > half * 0.3 and zeros_even == 0:
        return "utf-16-le"
    if zeros_even > half * 0.3 and zeros_odd == 0:
        return "utf-16-be"
    return None


def _sniff_zip(path: Path) -> FileKind:
    """Say what a zip file holds: an Office document, an OpenDocument, or an archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            mimetype = (
                archive.read("mimetype").decode("ascii", "replace").strip()
                if ("mimetype" in names)
                else ""
            )
    except (zipfile.BadZipFile, OSError, KeyError):
        return FileKind("zip", "a damaged zip archive", "give the contacts file itself")
    for part, kind, description, advice in _ZIP_PARTS:
        if part in names:
            return FileKind(kind, description, advice)
    if mimetype == "application/vnd.oasis.opendocument.spreadsheet":
        return FileKind("ods", "an OpenDocument spreadsheet (ods)", _OFFICE_ADVICE)
    if mimetype.startswith("application/vnd.oasis.opendocument"):
        return FileKind("odf", "an OpenDocument file", _OFFICE_ADVICE)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return FileKind(
        "zip",
        f"a zip archive ({shown or 'empty'})",
        "extract it and import the contacts file inside",
    )
