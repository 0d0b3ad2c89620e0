"""Document type detection and text extraction, on documents built in memory (tests/corpus.py)."""

from __future__ import annotations

import io
import zipfile

import pytest

from adapters.documents import MEDIA_TYPES, Extracted, ExtractionFailed, detect_type, extract
from tests import corpus

PDF, DOCX, HTML = MEDIA_TYPES["pdf"], MEDIA_TYPES["docx"], MEDIA_TYPES["html"]
TEXT, MARKDOWN, CSV, JSON = MEDIA_TYPES["text"], MEDIA_TYPES["markdown"], MEDIA_TYPES["csv"], MEDIA_TYPES["json"]


def refusal(call: object, *args: object, **kwargs: object) -> ExtractionFailed:
    with pytest.raises(ExtractionFailed) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- the samples ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(corpus.SAMPLES))
def test_each_sample_is_detected_as_its_type_and_its_fact_is_extracted(kind: str) -> None:
    sample = corpus.SAMPLES[kind]
    media_type = detect_type(sample.data, filename=sample.filename)
    assert media_type == sample.media_type == MEDIA_TYPES[kind]
    assert sample.fact in extract(sample.data, media_type).text


def test_each_sample_states_a_fact_no_other_sample_states() -> None:
    facts = [sample.fact for sample in corpus.SAMPLES.values()]
    texts = {kind: extract(s.data, s.media_type).text for kind, s in corpus.SAMPLES.items()}
    assert len(set(facts)) == len(facts)
    for kind, sample in corpus.SAMPLES.items():
        assert [other for other, text in texts.items() if sample.fact in text] == [kind]
    assert set(corpus.SAMPLES) == set(MEDIA_TYPES)


# --- detection ----------------------------------------------------------------------------------------------


def test_detection_trusts_content_over_the_file_name() -> None:
    assert detect_type(corpus.SAMPLES["pdf"].data, filename="notes.txt", declared="text/plain") == PDF
    assert detect_type(corpus.SAMPLES["docx"].data, filename="upload.bin", declared="application/octet-stream") == DOCX


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", b"\xef\xbb\xbf  \n"])
def test_empty_or_blank_upload_is_refused_with_document_empty(data: bytes) -> None:
    assert refusal(detect_type, data).code == "DOCUMENT_EMPTY"


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "JPEG image"),
        (b"GIF89a" + bytes(64), "GIF image"),
        (b"\x7fELF\x02\x01\x01" + bytes(64), "ELF executable"),
        (b"MZ\x90\x00\x03" + bytes(64), "Windows executable"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "legacy Office document (.doc/.xls/.ppt)"),
        (b"\x1f\x8b\x08\x00" + bytes(64), "gzip archive"),
    ],
)
def test_known_binary_formats_are_refused_with_unsupported_type_naming_them(data: bytes, looks_like: str) -> None:
    failure = refusal(detect_type, data, filename="report.pdf")
    assert (failure.code, failure.detail["looks_like"]) == ("UNSUPPORTED_TYPE", looks_like)
    assert looks_like in failure.message


def test_a_file_that_starts_with_mz_but_is_text_is_text() -> None:
    assert detect_type(b"MZ is a two-letter word.\n") == TEXT


def test_a_zip_that_is_not_a_docx_is_refused_with_unsupported_type() -> None:
    failure = refusal(detect_type, zip_of({"readme.txt": b"hello"}), filename="file.docx")
    assert (failure.code, failure.detail["looks_like"]) == ("UNSUPPORTED_TYPE", "zip archive")
    xlsx = refusal(detect_type, zip_of({"xl/workbook.xml": b"<workbook/>"}))
    assert xlsx.detail["looks_like"] == "Excel workbook (.xlsx)"


def test_a_damaged_zip_is_a_docx_only_when_named_so() -> None:
    truncated = corpus.SAMPLES["docx"].data[:300]
    assert detect_type(truncated, filename="quillon.docx") == DOCX
    assert refusal(detect_type, truncated, filename="archive.zip").code == "UNSUPPORTED_TYPE"


@pytest.mark.parametrize("data", [b"text\x00with a nul", bytes(range(256)) * 4, b"\x01\x02\x03\x04 abc \x05\x06\x07"])
def test_binary_data_is_refused_with_unsupported_type(data: bytes) -> None:
    assert refusal(detect_type, data).code == "UNSUPPORTED_TYPE"


def test_latin1_text_is_refused_with_invalid_utf8_and_the_offset() -> None:
    failure = refusal(detect_type, corpus.invalid_utf8())
    assert failure.code == "INVALID_UTF8"
    assert failure.detail["offset"] == 3  # "Caf" then the latin-1 é


def test_utf8_with_a_bom_is_accepted() -> None:
    data = b"\xef\xbb\xbf# Title\n\nBody text."
    assert detect_type(data) == MARKDOWN
    assert extract(data, MARKDOWN).text == "# Title\n\nBody text."


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_with_a_bom_are_decoded(encoding: str) -> None:
    source = "Grüße aus Köln.\r\nZweite Zeile."
    data = source.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    assert detect_type(data) == TEXT
    assert extract(data, TEXT).text == "Grüße aus Köln.\nZweite Zeile."


def test_utf16_with_a_bom_but_broken_content_is_invalid_utf8() -> None:
    assert refusal(detect_type, b"\xff\xfe" + b"a\x00\x00\xd8").code == "INVALID_UTF8"


@pytest.mark.parametrize(
    "data",
    [
        b"  <!DOCTYPE html><p>x</p>",
        b"<html><p>x</p></html>",
        b"<HTML lang='en'>x</HTML>",
        b"<!-- generated -->\n<head><title>t</title></head><body>x</body>",
    ],
)
def test_html_is_recognised_by_its_start_or_its_head_and_body(data: bytes) -> None:
    assert detect_type(data) == HTML


def test_an_html_fragment_is_html_only_when_named_so() -> None:
    fragment = b"<p>Just a <b>fragment</b>.</p>"
    assert detect_type(fragment, filename="page.html") == HTML
    assert detect_type(fragment) == TEXT


@pytest.mark.parametrize("data", [b'{"a": 1}', b"  [1, 2, 3]\n"])
def test_json_objects_and_arrays_are_json(data: bytes) -> None:
    assert detect_type(data, filename="notes.txt") == JSON


@pytest.mark.parametrize("data", [b"[not json", b'"just a string"', b"{broken: 1}"])
def test_text_that_is_not_a_json_object_or_array_is_not_json(data: bytes) -> None:
    assert detect_type(data, filename="data.json") != JSON


def test_csv_needs_both_a_csv_name_or_type_and_consistent_columns() -> None:
    table = corpus.csv([["name", "city"], ["Ada", "London"], ["Alan", "Wilmslow"]])
    assert detect_type(table, filename="people.csv") == CSV
    assert detect_type(table, declared="text/csv; charset=utf-8") == CSV
    assert detect_type(table, filename="people.txt") == TEXT
    prose = b"This is prose, with commas, in places.\nAnd a second line without.\n"
    assert detect_type(prose, filename="prose.csv") == TEXT


def test_markdown_by_name_declared_type_or_headings() -> None:
    assert detect_type(b"Just words.", filename="README.md") == MARKDOWN
    assert detect_type(b"Just words.", declared="text/markdown") == MARKDOWN
    assert detect_type(b"Intro\n\n## Section\n\nwords") == MARKDOWN
    assert detect_type(b"#hashtag is not a heading") == TEXT


# --- PDF ----------------------------------------------------------------------------------------------------


def test_pdf_pages_are_joined_with_blank_lines_and_their_starts_recorded() -> None:
    extracted = extract(corpus.pdf(["First page.", "Second page,\nsecond line.", "Third."], title="Report"), PDF)
    assert extracted.text == "First page.\n\nSecond page,\nsecond line.\n\nThird."
    assert extracted.page_starts == (0, 13, 40)
    assert [extracted.text[start:].split("\n")[0] for start in extracted.page_starts] == [
        "First page.",
        "Second page,",
        "Third.",
    ]
    assert extracted.title == "Report"


def test_pdf_title_is_none_without_metadata_title() -> None:
    assert extract(corpus.pdf(["Words."]), PDF).title is None


def test_blank_pdf_is_refused_with_document_empty() -> None:
    failure = refusal(extract, corpus.empty_pdf(), PDF)
    assert failure.code == "DOCUMENT_EMPTY"
    assert "OCR" in failure.message


def test_encrypted_pdf_is_refused_with_pdf_encrypted() -> None:
    assert refusal(extract, corpus.encrypted_pdf(), PDF).code == "PDF_ENCRYPTED"


def test_pdf_encrypted_with_an_empty_password_is_read() -> None:
    assert extract(corpus.encrypted_pdf(["Open to all."], user_password=""), PDF).text == "Open to all."


@pytest.mark.parametrize("data", [corpus.corrupt_pdf(), corpus.pdf(["Some text " * 50])[:400]])
def test_damaged_pdf_is_refused_with_pdf_corrupt(data: bytes) -> None:
    assert detect_type(data) == PDF
    assert refusal(extract, data, PDF).code == "PDF_CORRUPT"


def test_pdf_with_too_many_pages_is_refused_with_document_too_long() -> None:
    failure = refusal(extract, corpus.pdf([""] * 5001), PDF)
    assert (failure.code, failure.detail["pages"]) == ("DOCUMENT_TOO_LONG", 5001)


def test_pdf_text_over_max_chars_is_refused_with_document_too_long() -> None:
    assert refusal(extract, corpus.pdf(["x" * 80] * 3), PDF, max_chars=200).code == "DOCUMENT_TOO_LONG"


# --- DOCX ---------------------------------------------------------------------------------------------------


def test_docx_headings_lists_and_tables_become_markdown_in_document_order() -> None:
    data = corpus.docx(
        [
            ("Title", "Handbook"),
            ("Heading 1", "Setup"),
            ("Normal", "Install it."),
            ("Heading 2", "Linux"),
            ("List Bullet", "apt install it"),
            [["OS", "Command"], ["Debian", "apt"]],
            ("Normal", "  "),
            ("Normal", "After the table."),
        ]
    )
    extracted = extract(data, DOCX)
    assert extracted.text == (
        "# Handbook\n\n# Setup\n\nInstall it.\n\n## Linux\n\n- apt install it\n\nOS | Command\n\nDebian | apt"
        "\n\nAfter the table."
    )
    assert extracted.title == "Handbook"


def test_docx_title_comes_from_core_properties_before_the_first_heading() -> None:
    data = corpus.docx([("Heading 1", "Chapter one"), ("Normal", "Text.")], title="The Real Title")
    assert extract(data, DOCX).title == "The Real Title"
    assert extract(corpus.docx([("Heading 2", "Chapter one"), ("Normal", "Text.")]), DOCX).title == "Chapter one"


def test_docx_without_text_is_refused_with_document_empty() -> None:
    assert refusal(extract, corpus.docx([("Normal", "")]), DOCX).code == "DOCUMENT_EMPTY"


@pytest.mark.parametrize(
    "data",
    [
        corpus.SAMPLES["docx"].data[:300],
        zip_of({"word/document.xml": b"<w:document><not closed"}),
        zip_of({"[Content_Types].xml": b"<Types/>"}),
    ],
)
def test_damaged_docx_is_refused_with_docx_corrupt(data: bytes) -> None:
    assert refusal(extract, data, DOCX).code == "DOCX_CORRUPT"


def test_docx_with_a_highly_compressed_part_is_refused_with_zip_bomb() -> None:
    failure = refusal(extract, corpus.zip_bomb_docx(), DOCX)
    assert (failure.code, failure.detail["entry"]) == ("ZIP_BOMB", "word/media/padding.bin")


def test_docx_that_unpacks_past_the_limit_is_refused_with_zip_bomb() -> None:
    failure = refusal(extract, corpus.SAMPLES["docx"].data, DOCX, max_unpacked_bytes=10_000)
    assert (failure.code, failure.detail["max_unpacked_bytes"]) == ("ZIP_BOMB", 10_000)


# --- HTML ---------------------------------------------------------------------------------------------------


def test_html_keeps_visible_text_as_markdown_and_drops_the_rest() -> None:
    body = """
      <nav><ul><li>Home</li><li>About &amp; contact</li></ul></nav>
      <h1>Main   title</h1>
      <p>First    paragraph
         over two lines, caf&eacute;.</p>
      <script>alert("no")</script><noscript>Enable JS</noscript>
      <svg><text>vector</text></svg>
      <h3>Deeper</h3>
      <div>Line one<br>line two</div>
      <table><tr><th>Name</th><th>Age</th></tr><tr><td>Ada</td><td>36</td></tr></table>
      <pre>keep   this
  indent</pre>
    """
    extracted = extract(corpus.html(body, title="Page &lt;title&gt;"), HTML)
    assert extracted.text == (
        "- Home\n\n- About & contact\n\n# Main title\n\nFirst paragraph over two lines, café.\n\n### Deeper"
        "\n\nLine one\nline two\n\nName | Age\n\nAda | 36\n\nkeep   this\n  indent"
    )
    assert extracted.title == "Page <title>"
    for hidden in ("alert", "Enable JS", "vector", "color: red", "script text"):
        assert hidden not in extracted.text


def test_html_title_falls_back_to_the_first_heading() -> None:
    assert extract(b"<html><body><h2>Fallback</h2><p>x</p></body></html>", HTML).title == "Fallback"


def test_html_with_an_unclosed_head_still_yields_its_body() -> None:
    extracted = extract(b"<html><head><title>T</title><p>Visible text.</p></html>", HTML)
    assert (extracted.text, extracted.title) == ("Visible text.", "T")


def test_html_with_only_markup_is_refused_with_document_empty() -> None:
    assert refusal(extract, corpus.html("<div><img src='x.png'></div>"), HTML).code == "DOCUMENT_EMPTY"


# --- CSV and JSON -------------------------------------------------------------------------------------------


def test_csv_rows_become_self_describing_lines() -> None:
    data = corpus.csv([["name", "city", "note"], ["Ada", "London", "wrote, notes"], ["Alan", "", "x"]])
    assert extract(data, CSV).text == "name: Ada; city: London; note: wrote, notes\nname: Alan; note: x"


def test_csv_with_semicolons_is_read_with_its_own_delimiter() -> None:
    data = corpus.csv([["a", "b"], ["1", "2"]], delimiter=";")
    assert extract(data, CSV).text == "a: 1; b: 2"


@pytest.mark.parametrize("data", [b'name,city\nAda,"London\n', b"a,b\n1,2,3\n"])
def test_malformed_csv_is_refused_with_invalid_csv(data: bytes) -> None:
    assert refusal(extract, data, CSV).code == "INVALID_CSV"


def test_json_leaves_become_path_value_lines() -> None:
    data = corpus.json({"title": "Doc", "tags": ["a", "b"], "owner": {"name": "Ada", "age": 36, "admin": None}})
    assert extract(data, JSON).text == (
        "title: Doc\ntags[0]: a\ntags[1]: b\nowner.name: Ada\nowner.age: 36\nowner.admin: null"
    )


def test_invalid_json_is_refused_with_invalid_json() -> None:
    assert refusal(extract, b'{"a": ', JSON).code == "INVALID_JSON"


def test_very_deep_json_is_refused_not_crashing() -> None:
    assert refusal(extract, b"[" * 100_000 + b"]" * 100_000, JSON).code == "INVALID_JSON"


# --- text, Markdown and limits ------------------------------------------------------------------------------


def test_text_newlines_are_normalised() -> None:
    assert extract(b"one\r\ntwo\rthree\n", TEXT) == Extracted(TEXT, "one\ntwo\nthree\n", None)


def test_markdown_title_is_its_first_heading() -> None:
    assert extract(b"Intro\n\n## First heading ##\n\n# Second", MARKDOWN).title == "First heading"


def test_text_over_max_chars_is_refused_with_document_too_long() -> None:
    failure = refusal(extract, b"word " * 100, TEXT, max_chars=50)
    assert (failure.code, failure.detail["max_chars"]) == ("DOCUMENT_TOO_LONG", 50)


def test_invalid_utf8_is_refused_at_extraction_too() -> None:
    assert refusal(extract, corpus.invalid_utf8(), TEXT).code == "INVALID_UTF8"


@pytest.mark.parametrize("media_type", ["image/png", "application/msword", ""])
def test_unknown_media_type_is_refused_with_unsupported_type(media_type: str) -> None:
    assert refusal(extract, b"data", media_type).code == "UNSUPPORTED_TYPE"


def test_declared_media_type_parameters_are_ignored() -> None:
    assert extract(b"Plain.", "text/plain; charset=utf-8").media_type == TEXT


def test_extraction_failed_carries_code_message_and_detail() -> None:
    failure = ExtractionFailed("ZIP_BOMB", "Too big.", entry="x", unpacked_bytes=5)
    assert (failure.code, failure.message, failure.detail, str(failure)) == (
        "ZIP_BOMB",
        "Too big.",
        {"entry": "x", "unpacked_bytes": 5},
        "Too big.",
    )
