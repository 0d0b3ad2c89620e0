"""Properties of the identity aggregates and checks, over generated inputs and command sequences (no
I/O): token versions only ever rise, and rise with every revoking command; roles stay valid; a session
accepts only its current refresh token and reports any rotated-away one as reused; a tenant's first admin
is claimed once; replaying an aggregate's own events rebuilds an equal aggregate."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.errors import Conflict, Forbidden, Invalid, Unauthenticated
from domain.identity import (
    ROLES,
    ApiKey,
    Session,
    Tenant,
    User,
    check_password_strength,
    check_role,
    normalize_email,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
VERSION = 3
"""The user's token version while a session is refreshed."""

roles = st.sampled_from(ROLES)
not_roles = st.text(max_size=12).filter(lambda r: r not in ROLES)
hashes = st.uuids().map(lambda u: f"$hash${u.hex}")
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=100).filter(str.strip)
bad_names = st.one_of(
    st.text(" \t\n", max_size=5),  # blank once stripped
    st.text("abc", min_size=101, max_size=120),  # too long
    st.builds(lambda a, b: f"{a}\x00{b}", names, names),  # a control character
)


def replayed(events: Sequence[Any]) -> Any:
    """The aggregate its events alone rebuild, as the repository would."""
    aggregate = None
    for e in events:
        aggregate = e.mutate(aggregate)
    return aggregate


def raises_code(code: str, error: type[Exception], fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(error) as caught:
        fn(*args, **kwargs)
    assert caught.value.code == code  # type: ignore[attr-defined]


# --- pure checks -----------------------------------------------------------------------------------------
emails = st.one_of(
    st.emails().map(lambda e: e.upper() if len(e) % 2 else e),
    st.builds(lambda e, pad: f"{pad}{e}{pad}", st.emails(), st.sampled_from(["", " ", "\t", "  \n"])),
    st.text(max_size=80),
)


@given(emails)
def test_normalizing_an_email_twice_changes_nothing_more(raw: str) -> None:
    try:
        once = normalize_email(raw)
    except Invalid as exc:
        assert exc.code == "INVALID_EMAIL"
        return
    assert once == raw.strip().lower()
    assert normalize_email(once) == once


@given(st.text(max_size=9), st.emails() | st.just(""))
def test_passwords_shorter_than_ten_characters_are_always_weak(password: str, email: str) -> None:
    with pytest.raises(Invalid) as caught:
        check_password_strength(password, email)
    assert caught.value.code == "WEAK_PASSWORD"
    assert "at least 10 characters" in caught.value.message


@given(st.text(min_size=257, max_size=400))
def test_passwords_longer_than_256_characters_are_always_rejected(password: str) -> None:
    raises_code("WEAK_PASSWORD", Invalid, check_password_strength, password)


@given(not_roles)
def test_only_the_known_roles_are_roles(role: str) -> None:
    raises_code("INVALID_ROLE", Invalid, check_role, role)
    for known in ROLES:
        check_role(known)


# --- Tenant ----------------------------------------------------------------------------------------------
@given(
    st.lists(st.uuids(), min_size=1, max_size=6), st.lists(st.tuples(names, st.booleans(), roles), max_size=4)
)
def test_a_tenants_first_admin_is_claimed_once_and_never_again(
    claimants: list[uuid.UUID], changes: list[tuple[str, bool, str]]
) -> None:
    tenant = Tenant(slug="acme", name="Acme", allow_signup=True, default_role="user", domains=["acme.test"])
    for name, allow_signup, role in changes:  # settings changes do not touch the claim
        tenant.change_settings(name=name, allow_signup=allow_signup, default_role=role, domains=[])
    assert tenant.first_admin_id is None

    first, *others = claimants
    tenant.claim_first_admin(first)
    for other in [*others, first]:
        raises_code("FIRST_ADMIN_TAKEN", Conflict, tenant.claim_first_admin, other)
        assert tenant.first_admin_id == first

    events = tenant.collect_events()
    assert [e.__class__.__name__ for e in events].count("FirstAdminClaimed") == 1
    assert replayed(events) == tenant


# --- ApiKey ----------------------------------------------------------------------------------------------
@given(
    st.integers(min_value=0, max_value=5),
    st.none() | st.integers(min_value=1, max_value=3650).map(lambda d: NOW + timedelta(days=d)),
    st.integers(min_value=0, max_value=4000).map(lambda d: NOW + timedelta(days=d)),
)
def test_an_api_key_revoked_stays_revoked_and_expires_when_it_says(
    revocations: int, expires_at: datetime | None, when: datetime
) -> None:
    key = ApiKey(
        key_id=uuid.uuid4(),
        tenant_id="t",
        user_id=uuid.uuid4(),
        name="ci",
        prefix="pk_x",
        key_hash="h",
        scopes=["read"],
        expires_at=expires_at,
    )
    for _ in range(revocations):
        key.revoke()
    if revocations:
        raises_code("API_KEY_REVOKED", Unauthenticated, key.check_usable, when)
    elif expires_at is not None and when >= expires_at:
        raises_code("API_KEY_EXPIRED", Unauthenticated, key.check_usable, when)
    else:
        key.check_usable(when)
    events = key.collect_events()
    assert len(events) == 1 + min(revocations, 1)  # revoking twice records it once
    assert replayed(events) == key


# --- User ------------------------------------------------------------------------------------------------
class UserLifecycle(RuleBasedStateMachine):
    """Any sequence of commands on a User, against a model of what each must do."""

    @initialize(role=roles, name=names)
    def register(self, role: str, name: str) -> None:
        self.user = User(
            tenant_id="t",
            email="a@example.test",
            name=name,
            role=role,
            password_hash="h0",
            created_by="system",
        )
        self.history: list[Any] = []
        self.role, self.active, self.token_version, self.name = role, True, 1, name
        self.seen_version = 1

    def revoked(self) -> None:
        """A revoking command took effect: the version rises, so every outstanding token is refused."""
        self.token_version += 1

    @rule(password_hash=hashes)
    def change_password(self, password_hash: str) -> None:
        if self.active:
            self.user.change_password(password_hash)
            self.revoked()
        else:
            raises_code("USER_DEACTIVATED", Forbidden, self.user.change_password, password_hash)

    @rule(role=roles)
    def change_role(self, role: str) -> None:
        self.user.change_role(role)
        if role != self.role:
            self.role = role
            self.revoked()

    @rule(role=not_roles)
    def change_to_an_unknown_role(self, role: str) -> None:
        raises_code("INVALID_ROLE", Invalid, self.user.change_role, role)

    @rule(name=names)
    def rename(self, name: str) -> None:
        self.user.rename(name)
        self.name = name.strip()

    @rule(name=bad_names)
    def rename_to_an_invalid_name(self, name: str) -> None:
        raises_code("INVALID_NAME", Invalid, self.user.rename, name)

    @rule()
    def deactivate(self) -> None:
        self.user.deactivate()
        if self.active:
            self.active = False
            self.revoked()

    @rule()
    def reactivate(self) -> None:
        self.user.reactivate()
        self.active = True

    @rule(reason=st.sampled_from(["logout_everywhere", "admin", "breach"]))
    def revoke_tokens(self, reason: str) -> None:
        self.user.revoke_tokens(reason=reason)
        self.revoked()

    @invariant()
    def token_version_only_rises_and_rises_with_every_revocation(self) -> None:
        assert self.user.token_version >= self.seen_version
        assert self.user.token_version == self.token_version
        self.seen_version = self.user.token_version

    @invariant()
    def state_is_what_the_commands_said(self) -> None:
        assert self.user.role in ROLES
        assert (self.user.role, self.user.active, self.user.name) == (self.role, self.active, self.name)

    @invariant()
    def replaying_its_events_rebuilds_it(self) -> None:
        self.history += self.user.collect_events()
        assert replayed(self.history) == self.user
        bumps = [e for e in self.history if type(e).__name__ in REVOKING]
        assert self.user.token_version == 1 + len(bumps)


REVOKING = {"PasswordChanged", "RoleChanged", "UserDeactivated", "TokensRevoked"}

TestUserLifecycle = UserLifecycle.TestCase
TestUserLifecycle.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- Session ---------------------------------------------------------------------------------------------
class RefreshTokenFamily(RuleBasedStateMachine):
    """A session's refresh tokens through any number of rotations: only the current one refreshes, every
    rotated-away one is reported as reused, and nothing refreshes once the session has ended."""

    @initialize(first=hashes)
    def start(self, first: str) -> None:
        self.session = Session(
            session_id=uuid.uuid4(),
            tenant_id="t",
            user_id=uuid.uuid4(),
            refresh_hash=first,
            token_version=VERSION,
            expires_at=LATER,
        )
        self.current, self.used, self.ended = first, list[str](), False
        self.history: list[Any] = []

    @precondition(lambda self: not self.ended)
    @rule(new=hashes, days=st.integers(min_value=1, max_value=90))
    def rotate(self, new: str, days: int) -> None:
        assume(new != self.current and new not in self.used)
        self.session.check_refreshable(self.current, NOW, VERSION)  # what the service checks first
        self.session.rotate(refresh_hash=new, expires_at=NOW + timedelta(days=days))
        self.used.append(self.current)
        self.current = new

    @precondition(lambda self: not self.ended and bool(self.used))
    @rule(data=st.data())
    def present_a_rotated_away_token(self, data: st.DataObject) -> None:
        old = data.draw(st.sampled_from(self.used))
        raises_code(
            "REFRESH_TOKEN_REUSED", Unauthenticated, self.session.check_refreshable, old, NOW, VERSION
        )

    @precondition(lambda self: not self.ended)
    @rule(other=hashes)
    def present_a_token_it_never_issued(self, other: str) -> None:
        assume(other != self.current and other not in self.used)
        raises_code(
            "INVALID_REFRESH_TOKEN", Unauthenticated, self.session.check_refreshable, other, NOW, VERSION
        )

    @precondition(lambda self: not self.ended)
    @rule(version=st.integers(min_value=1, max_value=10).filter(lambda v: v != VERSION))
    def present_the_current_token_after_a_revocation(self, version: int) -> None:
        raises_code(
            "TOKEN_REVOKED", Unauthenticated, self.session.check_refreshable, self.current, NOW, version
        )

    @precondition(lambda self: not self.ended)
    @rule()
    def present_the_current_token_too_late(self) -> None:
        expired = self.session.expires_at + timedelta(seconds=1)
        raises_code(
            "REFRESH_TOKEN_EXPIRED",
            Unauthenticated,
            self.session.check_refreshable,
            self.current,
            expired,
            VERSION,
        )

    @rule(reason=st.sampled_from(["logout", "refresh_token_reused"]))
    def end(self, reason: str) -> None:
        self.session.end(reason)
        self.ended = True

    @precondition(lambda self: self.ended)
    @rule(data=st.data())
    def present_anything_after_the_end(self, data: st.DataObject) -> None:
        presented = data.draw(st.sampled_from([self.current, *self.used]) | hashes)
        raises_code("SESSION_ENDED", Unauthenticated, self.session.check_refreshable, presented, NOW, VERSION)

    @invariant()
    def only_the_current_token_refreshes(self) -> None:
        if not self.ended:
            self.session.check_refreshable(self.current, NOW, VERSION)
        assert self.session.refresh_hash == self.current
        assert self.session.used_hashes == self.used

    @invariant()
    def replaying_its_events_rebuilds_it(self) -> None:
        self.history += self.session.collect_events()
        assert replayed(self.history) == self.session
        assert [type(e).__name__ for e in self.history].count("SessionEnded") == int(self.ended)


TestRefreshTokenFamily = RefreshTokenFamily.TestCase
TestRefreshTokenFamily.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
