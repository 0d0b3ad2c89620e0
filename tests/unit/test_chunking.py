"""Chunking: sections, packing, splitting, overlap and offsets, without I/O."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from application.chunking import Chunk, chunk_text

HEADING_LINE = re.compile(r"^#{1,6}[ \t]+\S.*$", re.MULTILINE)
BLANK_LINES = re.compile(r"\s*\n\s*\n\s*")


def original_text(text: str, chunk: Chunk) -> str:
    """The chunk's span of the original text, with blank-line runs written as one blank line."""
    return BLANK_LINES.sub("\n\n", text[chunk.start : chunk.end])


def sentences(count: int, *, start: int = 0) -> str:
    return " ".join(f"Sentence number {n} says something." for n in range(start, start + count))


# --- sections ---------------------------------------------------------------------------------------------


def test_chunks_carry_the_heading_path_of_their_section() -> None:
    text = "# Install\n\nGeneral words.\n\n## Linux\n\nApt words.\n\n### Debian\n\nDeb words.\n\n## Mac\n\nBrew words."
    assert [(c.heading, c.text) for c in chunk_text(text)] == [
        ("Install", "General words."),
        ("Install > Linux", "Apt words."),
        ("Install > Linux > Debian", "Deb words."),
        ("Install > Mac", "Brew words."),
    ]


def test_a_new_top_level_heading_resets_the_path() -> None:
    text = "# A\n\n## B\n\nunder b\n\n# C\n\nunder c\n\n### D\n\nunder d"
    assert [c.heading for c in chunk_text(text)] == ["A > B", "C", "C > D"]


def test_text_before_the_first_heading_has_an_empty_heading() -> None:
    assert [(c.heading, c.text) for c in chunk_text("Preface.\n\n# One\n\nBody.")] == [
        ("", "Preface."),
        ("One", "Body."),
    ]


def test_a_section_with_only_a_heading_yields_no_chunk() -> None:
    chunks = chunk_text("# Empty\n\n   \n\n# Full\n\nContent.")
    assert [(c.heading, c.text) for c in chunks] == [("Full", "Content.")]


def test_closing_hashes_and_spaces_are_not_part_of_the_heading() -> None:
    assert chunk_text("##   Setup   ##  \nbody")[0].heading == "Setup"


def test_no_chunk_holds_text_of_two_sections() -> None:
    text = "# A\n\nalpha words\n\n# B\n\nbeta words"
    assert [c.text for c in chunk_text(text)] == ["alpha words", "beta words"]


def test_hash_lines_inside_a_code_fence_are_not_headings() -> None:
    text = "# Shell\n\n```bash\n# install it\napt install x\n```\n\nAfter."
    chunks = chunk_text(text)
    assert {c.heading for c in chunks} == {"Shell"}
    assert "# install it" in chunks[0].text


def test_a_hash_without_a_space_is_text_not_a_heading() -> None:
    assert [(c.heading, c.text) for c in chunk_text("#hashtag and ####### seven\n\nmore")] == [
        ("", "#hashtag and ####### seven\n\nmore")
    ]


def test_empty_and_whitespace_text_has_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n\t\n") == []


# --- packing and splitting ----------------------------------------------------------------------------------


def test_small_paragraphs_are_packed_into_one_chunk() -> None:
    chunks = chunk_text("One.\n\n\n\nTwo.\n  \nThree.", size=100, overlap=0)
    assert [c.text for c in chunks] == ["One.\n\nTwo.\n\nThree."]


def test_a_paragraph_that_does_not_fit_starts_the_next_chunk_whole() -> None:
    first, second = "a" * 60 + ".", "b " * 30 + "end."
    chunks = chunk_text(f"{first}\n\n{second}", size=100, overlap=0)
    assert [c.text for c in chunks] == [first, second]


def test_a_long_paragraph_is_split_at_sentence_ends() -> None:
    chunks = chunk_text(sentences(40), size=200, overlap=0)
    assert len(chunks) > 1
    assert all(c.text.endswith("something.") for c in chunks)
    assert " ".join(c.text for c in chunks) == sentences(40)


def test_a_long_paragraph_is_split_at_line_breaks_before_sentences() -> None:
    lines = [f"row {n}: value {n}; other {n}" for n in range(30)]
    chunks = chunk_text("\n".join(lines), size=150, overlap=0)
    assert all(line in [c for chunk in chunks for c in chunk.text.split("\n")] for line in lines)


def test_a_paragraph_without_sentences_is_split_at_whitespace() -> None:
    words = " ".join(f"word{n}" for n in range(200))
    chunks = chunk_text(words, size=100, overlap=0)
    assert " ".join(c.text for c in chunks) == words
    assert all(len(c.text) <= 100 for c in chunks)


def test_a_paragraph_without_whitespace_is_split_hard_at_size() -> None:
    blob = "x" * 250
    chunks = chunk_text(blob, size=100, overlap=20)
    assert [len(c.text) for c in chunks] == [100, 100, 50]  # no word boundary to start an overlap at


# --- overlap ------------------------------------------------------------------------------------------------


def test_consecutive_chunks_overlap_from_a_sentence_start() -> None:
    chunks = chunk_text(sentences(40), size=300, overlap=80)
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert current.start < previous.end
        repeated = previous.text[current.start - previous.start :]
        assert current.text.startswith(repeated)
        assert 0 < len(repeated) <= 80
        assert previous.text[current.start - previous.start - 1] == " "
        if current is not chunks[-1]:
            assert repeated.startswith("Sentence number")


def test_the_last_chunk_shortens_its_overlap_to_a_word_start_to_keep_the_rest_whole() -> None:
    chunks = chunk_text(sentences(40), size=300, overlap=80)
    assert chunks[-1].text.endswith("Sentence number 39 says something.")
    assert chunks[-1].text.split()[0] == "31"


def test_overlap_never_crosses_a_section() -> None:
    text = f"# A\n\n{sentences(20)}\n\n# B\n\n{sentences(20, start=100)}"
    chunks = chunk_text(text, size=300, overlap=100)
    first_of_b = next(c for c in chunks if c.heading == "B")
    assert first_of_b.text.startswith("Sentence number 100 ")


def test_overlap_is_dropped_rather_than_split_a_paragraph_that_fits() -> None:
    first = sentences(3)
    second = "z" * 190 + "."
    chunks = chunk_text(f"{first}\n\n{second}", size=200, overlap=90)
    assert [c.text for c in chunks] == [first, second]


def test_zero_overlap_gives_disjoint_chunks() -> None:
    chunks = chunk_text(sentences(60), size=250, overlap=0)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))


# --- offsets and pages --------------------------------------------------------------------------------------


def test_offsets_point_at_the_chunk_in_the_original_text() -> None:
    text = "# Title\n\n  First para\nline two.  \n\n \n\n\tSecond para.\n"
    (chunk,) = chunk_text(text)
    assert chunk.text == "First para\nline two.\n\nSecond para."
    assert chunk.text == original_text(text, chunk)
    assert text[chunk.start : chunk.end].startswith("First") and text[chunk.start : chunk.end].endswith("para.")


def test_the_page_is_the_one_where_the_chunk_starts() -> None:
    pages = [sentences(10, start=0), sentences(10, start=10), sentences(10, start=20)]
    text = "\n\n".join(pages)
    page_starts = [0, len(pages[0]) + 2, len(pages[0]) + len(pages[1]) + 4]
    chunks = chunk_text(text, size=200, overlap=0, page_starts=page_starts)
    assert chunks[0].page == 1 and chunks[-1].page == 3
    for chunk in chunks:
        expected = sum(1 for start in page_starts if start <= chunk.start)
        assert chunk.page == expected


def test_without_page_starts_chunks_have_no_page() -> None:
    assert chunk_text("Text.")[0].page is None


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "overlap"), [(99, 0), (8001, 0), (1000, -1), (1000, 500), (100, 60)])
def test_out_of_range_size_or_overlap_is_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", size=size, overlap=overlap)


def test_the_limits_themselves_are_accepted() -> None:
    assert chunk_text("text", size=100, overlap=49)[0].text == "text"
    assert chunk_text("text", size=8000, overlap=0)[0].text == "text"


# --- properties ---------------------------------------------------------------------------------------------

# Characters that exercise headings, sentence ends, blank lines and odd whitespace; no fences (` and ~),
# so every line the regex calls a heading is one.
ALPHABET = "ab xyz.!?#\n\n\n\t\r\u00a0\u2028é"
free_text = st.text(alphabet=ALPHABET, max_size=2500)
words = st.text(alphabet="abcdefghij", min_size=1, max_size=40)
paragraph = st.lists(st.one_of(words, words.map(lambda w: w + "."), st.just("\n")), min_size=1, max_size=120).map(
    " ".join
)
section = st.tuples(st.integers(1, 6), words, st.lists(paragraph, max_size=6)).map(
    lambda s: "#" * s[0] + " " + s[1] + "\n\n" + "\n\n".join(s[2])
)
structured_text = st.lists(section, max_size=8).map("\n\n".join)
documents = st.one_of(free_text, structured_text)
sizes = st.integers(100, 600).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, (size - 1) // 2)))


def heading_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in HEADING_LINE.finditer(text)]


@settings(max_examples=300, deadline=None)
@given(text=documents, limits=sizes)
def test_every_non_heading_character_is_in_some_chunk(text: str, limits: tuple[int, int]) -> None:
    size, overlap = limits
    covered = bytearray(len(text))
    for chunk in chunk_text(text, size=size, overlap=overlap):
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    for start, end in heading_spans(text):
        covered[start:end] = b"\x01" * (end - start)
    missed = [i for i, char in enumerate(text) if not covered[i] and not char.isspace()]
    assert missed == []


@settings(max_examples=300, deadline=None)
@given(text=documents, limits=sizes)
def test_chunks_fit_in_size_and_match_their_offsets(text: str, limits: tuple[int, int]) -> None:
    size, overlap = limits
    chunks = chunk_text(text, size=size, overlap=overlap)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
        assert chunk.text == original_text(text, chunk)
        assert not any(start < chunk.end and chunk.start < end for start, end in heading_spans(text))
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert previous.start < current.start
        if current.start < previous.end:
            assert previous.heading == current.heading
            assert len(BLANK_LINES.sub("\n\n", text[current.start : previous.end])) <= overlap


@settings(max_examples=100, deadline=None)
@given(text=documents, limits=sizes)
def test_chunking_is_deterministic(text: str, limits: tuple[int, int]) -> None:
    size, overlap = limits
    assert chunk_text(text, size=size, overlap=overlap) == chunk_text(text, size=size, overlap=overlap)
