"""Splitting a document's text into chunks for embedding and retrieval.

Chunks follow the document's structure because retrieval quality does: a chunk that starts in one section
and ends in the next embeds as a blend of two topics and matches neither well. So the text is first cut into
sections at Markdown heading lines (the shape ``adapters.documents`` gives every format), and no chunk ever
spans two sections. Each chunk carries its section's heading path ("Install > Linux"), which the caller can
prepend when embedding or show as the citation; the heading lines themselves are not chunk text.

Within a section whole paragraphs are packed while they fit in ``size`` characters. A paragraph that is
longer than ``size`` on its own is cut at the last line break, else the last sentence end, that leaves the
piece at least half full; else at the last whitespace; else hard at ``size``. Consecutive chunks of a
section overlap by at most ``overlap`` characters, copied from the end of the previous chunk starting at a
sentence (or else a word) boundary, so a fact cut in two is still whole in one of them; the overlap is
shortened or dropped where keeping it would split a paragraph that fits in a chunk on its own.

Offsets: ``text[chunk.start:chunk.end]`` is the original text of the chunk, and ``chunk.text`` equals it with
each whitespace run that contains two or more line breaks (the blank lines between paragraphs) replaced by
exactly ``"\\n\\n"``; nothing else is changed. Chunk text never starts or ends with whitespace. Lines are
separated by ``"\\n"`` (a ``"\\r"`` is just whitespace). A ``#`` line inside a fenced code block (opened by
three backticks or tildes) is a shell comment, not a heading.

Pure: no I/O, and the same input always gives the same chunks.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text"]

MIN_SIZE = 100
MAX_SIZE = 8000

_HEADING = re.compile(r"#{1,6}[ \t]+\S")
_HEADING_PARTS = re.compile(r"(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t\r]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s)")
_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’)\]]*\Z")


@dataclass(frozen=True)
class Chunk:
    index: int  # 0..n-1 in document order
    text: str  # the chunk's own text, without the heading path
    heading: str  # heading path of its section, e.g. "Install > Linux"; "" before the first heading
    page: int | None  # 1-based page where the chunk starts, when page_starts were given
    start: int  # text[start:end] is the chunk in the original text (see the module docstring)
    end: int


@dataclass(frozen=True)
class _Section:
    heading: str
    paragraphs: tuple[tuple[int, int], ...]  # (start, end) in the original text, without outer whitespace


def chunk_text(text: str, *, size: int = 1000, overlap: int = 150, page_starts: Sequence[int] = ()) -> list[Chunk]:
    """The chunks of ``text``, in document order.

    ``size`` (100..8000) is the most characters a chunk's text may have; ``overlap`` (0 <= overlap < size/2)
    the most characters it may repeat from the previous chunk of its section. ``page_starts``, when given,
    are the ascending offsets in ``text`` where pages 1, 2, ... begin.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE}, not {size}")
    if not 0 <= overlap or not overlap * 2 < size:
        raise ValueError(f"overlap must be at least 0 and less than half of size ({size}), not {overlap}")
    chunks: list[Chunk] = []
    for section in _sections(text):
        joined, starts = _join_paragraphs(text, section.paragraphs)
        for start, end in _split(joined, size, overlap):
            original_start = _original_offset(section.paragraphs, starts, start)
            original_end = _original_offset(section.paragraphs, starts, end - 1) + 1
            page = max(1, bisect_right(page_starts, original_start)) if page_starts else None
            chunks.append(Chunk(len(chunks), joined[start:end], section.heading, page, original_start, original_end))
    return chunks


def _sections(text: str) -> Iterator[_Section]:
    """Sections in order, each with its heading path and its paragraphs (runs of non-blank lines)."""
    path: list[tuple[int, str]] = []
    paragraphs: list[tuple[int, int]] = []
    paragraph_start: int | None = None
    paragraph_end = 0
    fence: str | None = None
    offset = 0

    def heading() -> str:
        return " > ".join(title for _, title in path if title)

    for line in text.split("\n"):
        line_start, offset = offset, offset + len(line) + 1
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
        elif fence is None and _HEADING.match(line):
            if paragraph_start is not None:
                paragraphs.append((paragraph_start, paragraph_end))
                paragraph_start = None
            if paragraphs:
                yield _Section(heading(), tuple(paragraphs))
                paragraphs = []
            parts = _HEADING_PARTS.fullmatch(line)
            level, title = (len(parts.group(1)), parts.group(2).strip()) if parts else (1, line.strip())
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, title))
            continue
        stripped = line.strip()
        if not stripped:
            if paragraph_start is not None:
                paragraphs.append((paragraph_start, paragraph_end))
                paragraph_start = None
            continue
        if paragraph_start is None:
            paragraph_start = line_start + (len(line) - len(line.lstrip()))
        paragraph_end = line_start + len(line.rstrip())
    if paragraph_start is not None:
        paragraphs.append((paragraph_start, paragraph_end))
    if paragraphs:
        yield _Section(heading(), tuple(paragraphs))


def _join_paragraphs(text: str, paragraphs: Sequence[tuple[int, int]]) -> tuple[str, list[int]]:
    """The section's text with one blank line between paragraphs, and where each paragraph starts in it."""
    starts: list[int] = []
    length = 0
    for start, end in paragraphs:
        starts.append(length)
        length += end - start + 2
    return "\n\n".join(text[start:end] for start, end in paragraphs), starts


def _original_offset(paragraphs: Sequence[tuple[int, int]], starts: Sequence[int], position: int) -> int:
    """Where a character of the joined section text (never one of the added blank lines) is in `text`."""
    index = bisect_right(starts, position) - 1
    return paragraphs[index][0] + position - starts[index]


def _split(joined: str, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each chunk of one section's joined text."""
    position = 0
    previous: tuple[int, int] | None = None
    while position < len(joined):
        start = position if previous is None else _overlap_start(joined, previous, position, size, overlap)
        limit = start + size
        end = len(joined) if len(joined) <= limit else _break(joined, position, limit)
        while joined[end - 1].isspace():
            end -= 1
        yield start, end
        previous = (start, end)
        position = end
        while position < len(joined) and joined[position].isspace():
            position += 1


def _break(joined: str, position: int, limit: int) -> int:
    """Where to end a chunk of new text that begins at `position` and may reach `limit` (exclusive)."""
    paragraph_end = joined.rfind("\n\n", position + 1, limit + 2)
    if paragraph_end != -1:
        return paragraph_end
    half = position + (limit - position) // 2
    line_end = joined.rfind("\n", half, limit + 1)
    if line_end != -1:
        return line_end
    sentence_end = -1
    for match in _SENTENCE_END.finditer(joined, half, limit + 1):
        sentence_end = match.end()
    if sentence_end != -1:
        return sentence_end
    for index in range(limit, position, -1):
        if joined[index].isspace():
            return index
    return limit


def _overlap_start(joined: str, previous: tuple[int, int], position: int, size: int, overlap: int) -> int:
    """Where the next chunk starts: in the previous chunk, at most `overlap` characters before `position`
    and at a sentence or word start; or at `position` when no boundary qualifies."""
    if overlap == 0:
        return position
    previous_start, previous_end = previous
    earliest = max(previous_start + 1, position - overlap)
    words = [
        index for index in range(earliest, previous_end) if not joined[index].isspace() and joined[index - 1].isspace()
    ]
    sentences = [index for index in words if _follows_sentence_end(joined, index)]
    sentence_set = set(sentences)
    candidates = sentences + [index for index in words if index not in sentence_set]
    # Only the next `size` characters matter: a paragraph that ends later does not fit anyway.
    paragraph_end = joined.find("\n\n", position, position + size + 2)
    if paragraph_end == -1:
        paragraph_end = len(joined) if len(joined) - position <= size else position + size + 1
    if paragraph_end - position <= size:
        # The next paragraph fits in one chunk: keep only as much overlap as lets it stay whole.
        candidates = [index for index in candidates if paragraph_end - index <= size]
    return candidates[0] if candidates else position


def _follows_sentence_end(joined: str, index: int) -> bool:
    """Whether the word at `index` begins a sentence (or a paragraph)."""
    last = index - 1
    while last >= 0 and joined[last].isspace():
        last -= 1
    if last < 0 or "\n\n" in joined[last:index]:
        return True
    return bool(_ENDS_SENTENCE.search(joined, max(0, last - 8), last + 1))
