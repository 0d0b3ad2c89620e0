"""Uploaded documents: what kind a file really is, and the text inside it.

Detection looks at the bytes, not at the name: a file called ``report.pdf`` that holds a PNG is refused,
and a Markdown file sent as ``application/octet-stream`` is still Markdown. The name and the declared type
only break ties between text kinds that the content alone cannot tell apart (CSV and Markdown look like
plain text). Detection is cheap enough for the HTTP request, so a bad upload is refused before anything is
stored; extraction is the expensive part and runs in the ingestion worker.

Extraction turns every kind into one shape, Markdown-ish plain text, because the chunker splits on
Markdown headings: HTML ``<h2>``, a DOCX "Heading 2" paragraph and a Markdown ``## `` line all become
``## `` lines. CSV rows and JSON leaves are written as self-describing lines (``city: Oslo; founded:
1932``, ``stations[0].name: Harrowgate``) so a chunk cut out of the middle still says what its values mean.

Every failure is an ``ExtractionFailed`` with a stable ``code`` that the API returns as is; nothing from a
parser library escapes. A DOCX is a zip archive, so its entries are measured before any is inflated
(``ZIP_BOMB``); the sizes a zip declares are also the most ``zipfile`` will ever inflate, so a lying
header cannot get past the check.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser

import docx
from docx.table import Table
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

__all__ = [
    "MEDIA_TYPES",
    "Extracted",
    "ExtractionFailed",
    "detect_type",
    "extract",
]

MEDIA_TYPES: dict[str, str] = {
    "text": "text/plain",
    "markdown": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "csv": "text/csv",
    "json": "application/json",
}

MAX_PDF_PAGES = 5_000
MAX_ZIP_ENTRIES = 10_000
ZIP_RATIO_LIMIT = 100  # per entry, for entries that inflate past ZIP_RATIO_MIN_SIZE
ZIP_RATIO_MIN_SIZE = 1_000_000

# Magic numbers of formats people upload by mistake, so the refusal can say what the file looks like.
_BINARY_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"\x7fELF", "ELF executable"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document (.doc/.xls/.ppt)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x00asm", "WebAssembly module"),
)
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_PDF_MAGIC = b"%PDF-"

# UTF-32 first: its little-endian BOM begins with the UTF-16 one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

# Bytes below 0x20 that text does not contain; tab, newlines, form feed and escape are fine.
_CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1B}
_SNIFF_BYTES = 8192
_CONTROL_RATIO_LIMIT = 0.02

_MARKDOWN_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)
_HTML_START = re.compile(r"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_HTML_SECTIONS = re.compile(r"<(head|body)[\s>]", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[a-zA-Z!/][^>]*>")


class ExtractionFailed(Exception):
    """A document that cannot be taken in. ``code`` is stable (the API returns it); ``detail`` holds
    machine-readable facts about the failure (what the file looks like, a size, an offset)."""

    def __init__(self, code: str, message: str, **detail: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    def __repr__(self) -> str:
        return f"ExtractionFailed({self.code!r}, {self.message!r}, **{self.detail!r})"


@dataclass(frozen=True)
class Extracted:
    media_type: str
    text: str  # Markdown-ish plain text: headings as "# " lines, paragraphs separated by blank lines
    title: str | None
    page_starts: tuple[int, ...] = field(default=())  # PDF only: offset in `text` where each page begins


# --- detection ----------------------------------------------------------------------------------------


def detect_type(data: bytes, *, filename: str | None = None, declared: str | None = None) -> str:
    """The media type of ``data``, one of ``MEDIA_TYPES``' values, decided by its content.

    ``filename`` and ``declared`` (a Content-Type) only choose among text kinds the content allows.
    Raises ``ExtractionFailed`` with DOCUMENT_EMPTY, UNSUPPORTED_TYPE or INVALID_UTF8.
    """
    if not data or data.isspace():  # as `not data.strip()`, without copying a file that ends in a newline
        raise ExtractionFailed("DOCUMENT_EMPTY", "The document is empty.")
    hint = _type_hint(filename, declared)
    head = data.lstrip()[:16]
    if head.startswith(_PDF_MAGIC):
        return MEDIA_TYPES["pdf"]
    if data.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return _detect_zip(data, hint)
    for magic, looks_like in _BINARY_MAGICS:
        if data.startswith(magic):
            raise _unsupported(looks_like)
    text = _decode_text(data)
    if not text or text.isspace():
        raise ExtractionFailed("DOCUMENT_EMPTY", "The document contains only whitespace.")
    return _detect_text_kind(text, hint)


def _type_hint(filename: str | None, declared: str | None) -> str | None:
    """The kind that the name or the declared type suggests ("csv", "markdown", ...), if any."""
    if declared:
        media_type = _bare_media_type(declared)
        for kind, known in MEDIA_TYPES.items():
            if media_type == known:
                return kind
        if media_type in ("text/x-markdown", "text/x-csv", "application/csv", "text/comma-separated-values"):
            return "markdown" if "markdown" in media_type else "csv"
        if media_type == "application/xhtml+xml":
            return "html"
    if filename:
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        by_extension = {
            "md": "markdown",
            "markdown": "markdown",
            "csv": "csv",
            "tsv": "csv",
            "html": "html",
            "htm": "html",
            "xhtml": "html",
            "json": "json",
            "txt": "text",
            "pdf": "pdf",
            "docx": "docx",
        }
        return by_extension.get(extension)
    return None


def _bare_media_type(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def _unsupported(looks_like: str) -> ExtractionFailed:
    return ExtractionFailed(
        "UNSUPPORTED_TYPE",
        f"This file looks like a {looks_like}, which is not a supported document type "
        "(supported: plain text, Markdown, HTML, PDF, DOCX, CSV, JSON).",
        looks_like=looks_like,
    )


def _detect_zip(data: bytes, hint: str | None) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        # A damaged DOCX is still a DOCX: let extraction say DOCX_CORRUPT, which tells the user more.
        if hint == "docx":
            return MEDIA_TYPES["docx"]
        raise _unsupported("damaged zip archive") from None
    if "word/document.xml" in names:
        return MEDIA_TYPES["docx"]
    if "xl/workbook.xml" in names:
        raise _unsupported("Excel workbook (.xlsx)")
    if "ppt/presentation.xml" in names:
        raise _unsupported("PowerPoint presentation (.pptx)")
    if "mimetype" in names and "content.xml" in names:
        raise _unsupported("OpenDocument file")
    raise _unsupported("zip archive")


def _looks_binary(data: bytes) -> bool:
    sample = data[:_SNIFF_BYTES]
    if b"\x00" in sample:
        return True
    controls = sum(1 for byte in sample if byte in _CONTROL_BYTES)
    return controls > _CONTROL_RATIO_LIMIT * len(sample)


def _decode_text(data: bytes) -> str:
    """Text from bytes: UTF-8 (with or without a BOM), or UTF-16/32 with a BOM. NULs and control bytes mean
    binary (UNSUPPORTED_TYPE); anything else that is not valid UTF-8 is INVALID_UTF8."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as error:
                raise ExtractionFailed(
                    "INVALID_UTF8",
                    f"The document starts with a {encoding.upper()} byte-order mark but is not valid {encoding.upper()}.",
                    offset=error.start + len(bom),
                ) from None
            if "\x00" in text:
                raise _unsupported("binary file")
            return text
    if _looks_binary(data):
        raise _unsupported("Windows executable" if data.startswith(b"MZ") else "binary file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ExtractionFailed(
            "INVALID_UTF8",
            f"The document is not valid UTF-8 (first bad byte at offset {error.start}). Save it as UTF-8 and retry.",
            offset=error.start,
        ) from None


def _detect_text_kind(text: str, hint: str | None) -> str:
    start = text.lstrip()[:4096]
    if _HTML_START.match(start) or _HTML_SECTIONS.search(start[:2048]):
        return MEDIA_TYPES["html"]
    if hint == "html" and _ANY_TAG.search(start[:1024]):
        return MEDIA_TYPES["html"]
    if start[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict | list):
            return MEDIA_TYPES["json"]
    if hint == "csv" and _looks_like_csv(text):
        return MEDIA_TYPES["csv"]
    if hint == "markdown" or _MARKDOWN_HEADING.search(text):
        return MEDIA_TYPES["markdown"]
    return MEDIA_TYPES["text"]


def _looks_like_csv(text: str) -> bool:
    """At least two columns, and the same number on every one of the first rows."""
    sample = text[:65536]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        rows = [row for row in csv.reader(io.StringIO(sample), dialect) if row][:50]
    except csv.Error:
        return False
    if len(sample) == len(text):
        complete = rows
    else:
        complete = rows[:-1]  # the sample may have cut the last row short
    widths = {len(row) for row in complete}
    return len(widths) == 1 and widths.pop() >= 2


# --- extraction ---------------------------------------------------------------------------------------


def extract(
    data: bytes,
    media_type: str,
    *,
    max_chars: int = 5_000_000,
    max_unpacked_bytes: int = 200_000_000,
) -> Extracted:
    """The text of a document of ``media_type`` (as ``detect_type`` returned it).

    Raises ``ExtractionFailed``: DOCUMENT_EMPTY, PDF_ENCRYPTED, PDF_CORRUPT, DOCX_CORRUPT, ZIP_BOMB,
    INVALID_UTF8, INVALID_JSON, INVALID_CSV, DOCUMENT_TOO_LONG, UNSUPPORTED_TYPE.
    """
    media_type = _bare_media_type(media_type)
    if media_type == MEDIA_TYPES["pdf"]:
        extracted = _extract_pdf(data, max_chars)
    elif media_type == MEDIA_TYPES["docx"]:
        extracted = _extract_docx(data, max_unpacked_bytes)
    elif media_type in (MEDIA_TYPES["text"], MEDIA_TYPES["markdown"], MEDIA_TYPES["html"]):
        text = _text_for_extraction(data, max_chars)
        if media_type == MEDIA_TYPES["html"]:
            extracted = _extract_html(text)
        else:
            title = _first_heading(text) if media_type == MEDIA_TYPES["markdown"] else None
            extracted = Extracted(media_type, text, title)
    elif media_type == MEDIA_TYPES["csv"]:
        extracted = Extracted(media_type, _render_csv(_text_for_extraction(data, max_chars)), None)
    elif media_type == MEDIA_TYPES["json"]:
        extracted = Extracted(media_type, _render_json(_text_for_extraction(data, max_chars)), None)
    else:
        raise ExtractionFailed(
            "UNSUPPORTED_TYPE",
            f"{media_type or 'This type'} is not a supported document type.",
            media_type=media_type,
        )
    if not extracted.text.strip():
        raise ExtractionFailed("DOCUMENT_EMPTY", _empty_message(media_type))
    _check_length(len(extracted.text), max_chars)
    return extracted


def _empty_message(media_type: str) -> str:
    if media_type == MEDIA_TYPES["pdf"]:
        return "The PDF contains no text (a scanned PDF needs OCR before it can be uploaded)."
    return "The document contains no text."


def _check_length(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise ExtractionFailed(
            "DOCUMENT_TOO_LONG",
            f"The document's text is longer than the limit of {max_chars:,} characters.",
            max_chars=max_chars,
        )


def _text_for_extraction(data: bytes, max_chars: int) -> str:
    # Every character takes at least one byte... and at most four, so more bytes than this cannot fit.
    _check_length(len(data) // 4, max_chars)
    text = _decode_text(data)
    return _normalise_newlines(text)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _first_heading(text: str) -> str | None:
    match = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


# PDF


def _extract_pdf(data: bytes, max_chars: int) -> Extracted:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))  # some PDFs are "encrypted" with an empty user password
            except (DependencyError, NotImplementedError):
                opened = False
            if not opened:
                raise ExtractionFailed("PDF_ENCRYPTED", "The PDF is password-protected; upload an unprotected copy.")
        page_count = len(reader.pages)
        if page_count > MAX_PDF_PAGES:
            raise ExtractionFailed(
                "DOCUMENT_TOO_LONG",
                f"The PDF has {page_count:,} pages; the limit is {MAX_PDF_PAGES:,}.",
                pages=page_count,
                max_pages=MAX_PDF_PAGES,
            )
        title = _pdf_title(reader)
        pages: list[str] = []
        page_starts: list[int] = []
        length = 0
        for page in reader.pages:
            page_text = _normalise_newlines(page.extract_text() or "").strip()
            if pages:
                length += 2  # the blank line between pages
            page_starts.append(length)
            pages.append(page_text)
            length += len(page_text)
            _check_length(length, max_chars)
    except ExtractionFailed:
        raise
    except FileNotDecryptedError:
        raise ExtractionFailed("PDF_ENCRYPTED", "The PDF is password-protected; upload an unprotected copy.") from None
    except Exception as error:  # pypdf raises many types (its own, ValueError, KeyError, ...) on bad input
        raise ExtractionFailed(
            "PDF_CORRUPT", "The PDF is damaged and cannot be read.", reason=f"{type(error).__name__}: {error}"
        ) from None
    return Extracted(MEDIA_TYPES["pdf"], "\n\n".join(pages), title, tuple(page_starts))


def _pdf_title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception:  # a damaged Info dictionary costs the title, not the document
        return None
    if not title:
        return None
    return str(title).strip() or None


# DOCX


def _check_zip(data: bytes, max_unpacked_bytes: int) -> None:
    """Refuse an archive that would inflate to more than we accept, before anything is inflated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ExtractionFailed(
            "DOCX_CORRUPT", "The DOCX file is damaged (not a readable zip archive).", reason=str(error)
        ) from None
    if len(entries) > MAX_ZIP_ENTRIES:
        raise ExtractionFailed(
            "ZIP_BOMB", f"The DOCX holds {len(entries):,} files; that is not a real document.", entries=len(entries)
        )
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > max_unpacked_bytes:
        raise ExtractionFailed(
            "ZIP_BOMB",
            f"The DOCX would unpack to {unpacked:,} bytes; the limit is {max_unpacked_bytes:,}.",
            unpacked_bytes=unpacked,
            max_unpacked_bytes=max_unpacked_bytes,
        )
    for entry in entries:
        if entry.file_size > ZIP_RATIO_MIN_SIZE and entry.file_size > ZIP_RATIO_LIMIT * max(entry.compress_size, 1):
            raise ExtractionFailed(
                "ZIP_BOMB",
                f"The DOCX part {entry.filename} is compressed more than {ZIP_RATIO_LIMIT}:1; refusing to unpack it.",
                entry=entry.filename,
                unpacked_bytes=entry.file_size,
                compressed_bytes=entry.compress_size,
            )


def _extract_docx(data: bytes, max_unpacked_bytes: int) -> Extracted:
    _check_zip(data, max_unpacked_bytes)

    try:
        document = docx.Document(io.BytesIO(data))
        core_title = (document.core_properties.title or "").strip() or None
        blocks: list[str] = []
        first_heading: str | None = None
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                blocks.extend(_docx_table_rows(block))
                continue
            line = _docx_paragraph(block.text, block.style.name if block.style is not None else "")
            if line is None:
                continue
            if first_heading is None and line.startswith("#"):
                first_heading = line.lstrip("#").strip()
            blocks.append(line)
    except Exception as error:  # python-docx and lxml raise many types on damaged parts
        raise ExtractionFailed(
            "DOCX_CORRUPT", "The DOCX file is damaged and cannot be read.", reason=f"{type(error).__name__}: {error}"
        ) from None
    return Extracted(MEDIA_TYPES["docx"], "\n\n".join(blocks), core_title or first_heading)


_DOCX_HEADING = re.compile(r"heading ([1-9])", re.IGNORECASE)


def _docx_paragraph(text: str, style: str) -> str | None:
    text = _normalise_newlines(text).strip()
    if not text:
        return None
    heading = _DOCX_HEADING.fullmatch(style.strip())
    if heading:
        return "#" * min(int(heading.group(1)), 6) + " " + " ".join(text.split())
    if style.strip().lower() == "title":
        return "# " + " ".join(text.split())
    if style.lower().startswith(("list bullet", "list number")):
        return "- " + text
    return text


def _docx_table_rows(table: Table) -> list[str]:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is reported once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


# HTML

_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object"})
_HEAD_TAGS = frozenset({"title", "meta", "link", "style", "script", "base", "noscript", "template"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "details", "dialog", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
        "section", "summary", "table", "tbody", "thead", "tfoot", "tr", "ul", "caption", "body", "html",
        "h1", "h2", "h3", "h4", "h5", "h6",
    }
)  # fmt: skip
_HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}


class _HtmlText(HTMLParser):
    """Collects the visible text of a page as Markdown-ish paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.title: str | None = None
        self.first_heading: str | None = None
        self._parts: list[str | None] = []  # None marks a <br>
        self._prefix = ""
        self._skip_depth = 0
        self._in_head = False
        self._in_title = False
        self._title_parts: list[str] = []
        self._pre_depth = 0
        self._cells_in_row = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
            return
        if tag == "head":
            self._in_head = True
            return
        if self._in_head and tag not in _HEAD_TAGS:
            self._in_head = False  # an unclosed <head>: the body has begun
        if self._in_title:
            self._end_title()  # an unclosed <title> must not swallow the page
        if tag == "title":
            self._in_title = True
            return
        if self._skip_depth or self._in_head:
            return
        if tag == "br":
            self._parts.append(None)
        elif tag in ("td", "th"):
            if self._cells_in_row:
                self._parts.append(" | ")
            self._cells_in_row += 1
        elif tag in _BLOCK_TAGS:
            self._flush()
            if tag in _HEADING_LEVELS:
                self._prefix = "#" * _HEADING_LEVELS[tag] + " "
            elif tag == "li":
                self._prefix = "- "
            elif tag == "pre":
                self._pre_depth += 1
            elif tag == "tr":
                self._cells_in_row = 0

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            return  # <svg/>: nothing inside to skip
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "head":
            self._in_head = False
        elif tag == "title":
            self._end_title()
        elif tag in _BLOCK_TAGS and not self._skip_depth:
            self._flush()
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        elif not self._skip_depth and not self._in_head:
            self._parts.append(data)

    def _end_title(self) -> None:
        self._in_title = False
        if self.title is None:
            self.title = " ".join("".join(self._title_parts).split()) or None

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        lines: list[str] = []
        current: list[str] = []
        for part in [*self._parts, None]:
            if part is not None:
                current.append(part)
                continue
            line = "".join(current)
            if self._pre_depth:
                lines.extend(line.strip("\n").split("\n"))
            else:
                lines.append(" ".join(line.split()))
            current = []
        body = "\n".join(line.rstrip() for line in lines).strip("\n")
        if body.strip():
            if self._prefix.startswith("#"):
                body = " ".join(body.split())
                if self.first_heading is None:
                    self.first_heading = body
            self.paragraphs.append(self._prefix + body)
        self._parts = []
        self._prefix = ""


def _extract_html(text: str) -> Extracted:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return Extracted(MEDIA_TYPES["html"], "\n\n".join(parser.paragraphs), parser.title or parser.first_heading)


# CSV


def _render_csv(text: str) -> str:
    """One line per row, each value named by its column: ``name: Oslo; founded: 1932``."""
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect, strict=True) if any(v.strip() for v in row)]
    except csv.Error as error:
        raise ExtractionFailed("INVALID_CSV", f"The CSV cannot be parsed: {error}.", reason=str(error)) from None
    if not rows:
        return ""
    header = [name.strip() for name in rows[0]]
    if len(rows) == 1:
        return "; ".join(header)
    lines = []
    for row in rows[1:]:
        if len(row) > len(header):
            raise ExtractionFailed(
                "INVALID_CSV",
                f"A CSV row has {len(row)} values but the header names only {len(header)} columns.",
                columns=len(header),
                values=len(row),
            )
        pairs = [
            f"{header[column] or f'column {column + 1}'}: {' '.join(value.split())}"
            for column, value in enumerate(row)
            if value.strip()
        ]
        lines.append("; ".join(pairs))
    return "\n".join(lines)


# JSON


def _render_json(text: str) -> str:
    """One line per leaf, named by its path: ``stations[0].name: Harrowgate``."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ExtractionFailed("INVALID_JSON", f"The JSON cannot be parsed: {error}.", reason=str(error)) from None
    lines: list[str] = []
    stack: list[tuple[str, object]] = [("", value)]
    while stack:  # iterative: nesting as deep as the parser allows does not exhaust our stack
        path, node = stack.pop()
        if isinstance(node, dict) and node:
            children = [(f"{path}.{key}" if path else str(key), child) for key, child in node.items()]
            stack.extend(reversed(children))
        elif isinstance(node, list) and node:
            stack.extend(reversed([(f"{path}[{index}]", child) for index, child in enumerate(node)]))
        else:
            rendered = node if isinstance(node, str) else json.dumps(node, ensure_ascii=False)
            rendered = " ".join(rendered.split()) if isinstance(node, str) else rendered
            lines.append(f"{path}: {rendered}" if path else rendered)
    return "\n".join(lines)
