"""Reciprocal rank fusion of the vector and full-text rankings (no I/O)."""

from __future__ import annotations

from projections.vectors import RRF_K, fuse


def test_a_chunk_both_rankings_found_beats_one_that_either_ranked_first() -> None:
    a, b, c = ("d1", 0), ("d2", 0), ("d3", 1)
    hits = fuse([([(a, 0.9), (c, 0.8)], [b, c])], limit=3)
    assert [(h.document_id, h.chunk_index) for h in hits] == [c, a, b]
    assert hits[0].score == 2 / (RRF_K + 2) and (hits[0].vector_rank, hits[0].text_rank) == (2, 2)
    assert hits[1].similarity == 0.9 and hits[1].text_rank is None
    assert hits[2].vector_rank is None and hits[2].similarity is None


def test_fusion_adds_up_scopes_keeps_the_best_rank_and_breaks_ties_by_chunk() -> None:
    a, b = ("d2", 0), ("d1", 0)
    hits = fuse([([(a, 0.5)], []), ([], [a, b]), ([(b, 0.4)], [])], limit=1)
    assert [(h.document_id, h.chunk_index) for h in hits] == [a]
    assert hits[0].score == 1 / (RRF_K + 1) * 2 and hits[0].text_rank == 1
    tied = fuse([([(a, 0.5)], []), ([(b, 0.5)], [])], limit=2)
    assert [h.document_id for h in tied] == ["d1", "d2"]
