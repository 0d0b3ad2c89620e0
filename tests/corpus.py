"""Sample documents as bytes, built in memory, for the unit tests of extraction and chunking and for the
integration tests of ingestion and search.

Every generator is deterministic in what it says (a DOCX carries timestamps in its metadata, so its bytes
differ between calls, its text does not). PDFs are written by hand here, one page object and one content
stream per page in the standard Helvetica font, so that no PDF-writing library is needed; pypdf is used
only where a PDF must be rewritten (encryption).

``SAMPLES`` holds one small document per supported kind, each stating one invented fact that appears in no
other sample, with a question whose answer is that fact: a search test uploads them all, asks the question
and expects the chunk of that document back.
"""

from __future__ import annotations

import csv as csv_lib
import io
import json as json_lib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import docx as python_docx
from pypdf import PdfReader, PdfWriter

__all__ = [
    "SAMPLES",
    "Sample",
    "corrupt_pdf",
    "csv",
    "docx",
    "empty_pdf",
    "encrypted_pdf",
    "html",
    "invalid_utf8",
    "json",
    "markdown",
    "pdf",
    "text",
    "zip_bomb_docx",
]


def _pdf_string(line: str) -> bytes:
    """A PDF literal string in WinAnsi (latin-1 covers what the samples use)."""
    escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1", errors="replace") + b")"


def _page_content(page: str) -> bytes:
    lines = [b"BT", b"/F1 12 Tf", b"14 TL", b"72 720 Td"]
    for line in page.split("\n"):
        if line:
            lines.append(_pdf_string(line) + b" Tj")
        lines.append(b"T*")
    lines.append(b"ET")
    return b"\n".join(lines) if page else b""


def pdf(pages: Sequence[str], *, title: str | None = None) -> bytes:
    """A valid PDF with one page per string; each line of a string is one line of text on its page."""
    objects: list[bytes] = []  # object n is objects[n - 1]
    page_ids = [5 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % page_id for page_id in page_ids)
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(pages))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    objects.append(b"<< /Producer (parley test corpus)" + (b" /Title " + _pdf_string(title) if title else b"") + b" >>")
    for page_id, page in zip(page_ids, pages, strict=True):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
            b" /Contents %d 0 R >>" % (page_id + 1)
        )
        content = _page_content(page)
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def empty_pdf() -> bytes:
    """A valid one-page PDF whose page is blank: what a scan without OCR looks like to text extraction."""
    return pdf([""])


def encrypted_pdf(pages: Sequence[str] = ("Top secret.",), *, user_password: str = "secret") -> bytes:
    """``pdf(pages)`` encrypted (AES-128). With ``user_password=""`` anyone may open it."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(pages))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def corrupt_pdf() -> bytes:
    """Starts like a PDF, then is not one: no objects, no cross-reference table, no trailer."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"this is not a pdf body \x00\x01\x02" * 40


def docx(blocks: Sequence[tuple[str, str] | list[list[str]]], *, title: str | None = None) -> bytes:
    """A DOCX made by python-docx. Each block is a paragraph ``(style, text)`` with a built-in style name
    ("Normal", "Title", "Heading 1".."Heading 9", "List Bullet", ...) or a table given as a list of rows."""
    document = python_docx.Document()
    if title is not None:
        document.core_properties.title = title
    for block in blocks:
        if isinstance(block, list):
            table = document.add_table(rows=len(block), cols=max(len(row) for row in block))
            for table_row, values in zip(table.rows, block, strict=True):
                for cell, value in zip(table_row.cells, values, strict=False):
                    cell.text = value
        else:
            style, paragraph_text = block
            document.add_paragraph(paragraph_text, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bomb_docx(unpacked_mb: int = 8) -> bytes:
    """A real DOCX with one extra part of ``unpacked_mb`` MB of zeros: it deflates about 1000:1."""
    buffer = io.BytesIO(docx([("Normal", "Harmless on the outside.")]))
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/padding.bin", bytes(unpacked_mb * 1024 * 1024))
    return buffer.getvalue()


def html(body: str, *, title: str | None = None) -> bytes:
    """A complete HTML5 page around ``body`` (raw HTML), with a head that holds a script and a style."""
    head = (f"<title>{title}</title>" if title is not None else "") + (
        '<meta charset="utf-8"><style>body { color: red; }</style><script>var hidden = "script text";</script>'
    )
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>\n{body}\n</body>\n</html>\n'.encode()


def markdown(source: str) -> bytes:
    return source.encode()


def text(source: str) -> bytes:
    return source.encode()


def csv(rows: Sequence[Sequence[str]], *, delimiter: str = ",") -> bytes:
    """CSV with the first row as its header."""
    buffer = io.StringIO()
    writer = csv_lib.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue().encode()


def json(value: object) -> bytes:
    return json_lib.dumps(value, indent=2, ensure_ascii=False).encode()


def invalid_utf8() -> bytes:
    """Latin-1 text: readable to a person, not valid UTF-8."""
    return "Café au lait, crème brûlée and a naïve façade.\n".encode("latin-1")


@dataclass(frozen=True)
class Sample:
    name: str
    filename: str
    media_type: str
    data: bytes
    fact: str  # appears verbatim in the extracted text
    question: str  # answered by `fact` and by nothing else in SAMPLES


def _samples() -> dict[str, Sample]:
    filler = "This paragraph is here so that the document has more than one paragraph of ordinary text."
    facts = {
        "text": (
            "The Pomfrey orchard grows 77 kinds of plum.",
            "How many kinds of plum does the Pomfrey orchard grow?",
        ),
        "markdown": ("The Drelkan bridge spans 312 metres.", "How long is the Drelkan bridge?"),
        "html": ("The Vexmoor lighthouse is painted teal.", "What colour is the Vexmoor lighthouse?"),
        "pdf": ("The Zorblat reactor runs at 451 kelvin.", "At what temperature does the Zorblat reactor run?"),
        "docx": ("The Quillon archive opened in 1987.", "When did the Quillon archive open?"),
        "csv": ("The Brindlewick observatory was founded in 1932.", "When was the Brindlewick observatory founded?"),
        "json": ("The Harrowgate station has 9 platforms.", "How many platforms does the Harrowgate station have?"),
    }
    documents = {
        "text": ("pomfrey.txt", "text/plain", text(f"Orchard notes\n\n{filler}\n\n{facts['text'][0]}\n")),
        "markdown": (
            "drelkan.md",
            "text/markdown",
            markdown(f"# Drelkan bridge\n\n{filler}\n\n## Dimensions\n\n{facts['markdown'][0]}\n"),
        ),
        "html": (
            "vexmoor.html",
            "text/html",
            html(f"<h1>Vexmoor</h1><p>{filler}</p><p>{facts['html'][0]}</p>", title="Vexmoor lighthouse"),
        ),
        "pdf": ("zorblat.pdf", "application/pdf", pdf([filler, facts["pdf"][0]], title="Zorblat reactor")),
        "docx": (
            "quillon.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            docx([("Heading 1", "Quillon archive"), ("Normal", filler), ("Normal", facts["docx"][0])]),
        ),
        "csv": (
            "observatories.csv",
            "text/csv",
            csv([["name", "city", "fact"], ["Tollmere", "Bergen", filler], ["Brindlewick", "Oslo", facts["csv"][0]]]),
        ),
        "json": (
            "stations.json",
            "application/json",
            json({"stations": [{"name": "Harrowgate", "note": facts["json"][0]}, {"name": "Kelby", "note": filler}]}),
        ),
    }
    return {
        kind: Sample(kind, filename, media_type, data, *facts[kind])
        for kind, (filename, media_type, data) in documents.items()
    }


SAMPLES: dict[str, Sample] = _samples()
