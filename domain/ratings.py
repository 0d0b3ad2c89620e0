"""Ratings of assistant answers: thumbs up or down, an optional reason and comment, one per user per
message (Open WebUI's feedback). The rating's id follows from the user and the message, so there is at
most one without a read model; rating again changes it, removing it leaves it removed until rated again.

The model that wrote the answer travels on every rating event, so usage reports count satisfaction per
model without looking the answer up. The comment is personal data, sealed with the rating's key, whose
subjects are the rater and the chat: erasing the rater or deleting the chat shreds it.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import Invalid, NotFound

__all__ = ["MAX_COMMENT_CHARS", "MAX_REASON_CHARS", "RATINGS", "Rating", "check_rating", "rating_id_for"]

RATINGS = ("up", "down")
MAX_REASON_CHARS = 100
"""A reason is a short label (Open WebUI's are "Accurate information", "Not helpful", ...)."""
MAX_COMMENT_CHARS = 2_000


def rating_id_for(tenant_id: str, user_id: UUID, message_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/tenants/{tenant_id}/users/{user_id}/messages/{message_id}/rating")


def check_rating(rating: str, reason: str | None, comment: str | None) -> tuple[str, str | None, str | None]:
    """(rating, reason, comment) checked and trimmed; blank reason or comment become None."""
    if rating not in RATINGS:
        raise Invalid("INVALID_RATING", "rating is up or down", field="rating")
    reason = (reason or "").strip() or None
    if reason is not None and (len(reason) > MAX_REASON_CHARS or any(ord(c) < 32 for c in reason)):
        raise Invalid("INVALID_REASON", f"a reason is one line of at most {MAX_REASON_CHARS} characters", field="reason")
    comment = (comment or "").strip() or None
    if comment is not None and (len(comment) > MAX_COMMENT_CHARS or "\x00" in comment):
        raise Invalid("INVALID_COMMENT", f"a comment holds at most {MAX_COMMENT_CHARS} characters", field="comment")
    return rating, reason, comment


class Rating(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, user_id: UUID, message_id: str, **_: Any) -> UUID:
        return rating_id_for(tenant_id, user_id, message_id)

    @event("MessageRated")
    def __init__(
        self,
        tenant_id: str,
        user_id: UUID,
        chat_id: UUID,
        message_id: str,
        model: str,
        rating: str,
        reason: str | None,
        comment: str | None,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.chat_id = chat_id
        self.message_id = message_id
        self.model = model
        self.rating: str | None = rating
        self.reason = reason
        self.comment = comment

    @property
    def removed(self) -> bool:
        return self.rating is None

    def change(self, rating: str, reason: str | None, comment: str | None) -> bool:
        """False when nothing changes (the same rating again records nothing)."""
        if (rating, reason, comment) == (self.rating, self.reason, self.comment):
            return False
        self._change(rating=rating, reason=reason, comment=comment, model=self.model)
        return True

    @event("RatingChanged")
    def _change(self, rating: str, reason: str | None, comment: str | None, model: str) -> None:
        self.rating = rating
        self.reason = reason
        self.comment = comment

    def remove(self) -> None:
        if self.removed:
            raise NotFound("RATING_NOT_FOUND", "this message has no rating of yours")
        self._remove(model=self.model)

    @event("RatingRemoved")
    def _remove(self, model: str) -> None:
        self.rating = None
        self.reason = None
        self.comment = None
