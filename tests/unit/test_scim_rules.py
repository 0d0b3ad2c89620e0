"""SCIM's pure rules (no I/O): which role a user's groups give, uniqueness in a tenant's directory, a
group's member changes, SCIM tokens' form."""

from __future__ import annotations

import uuid

import pytest

from application.scim import ScimUserData, _display_name, _email, _name_hash, new_scim_token, parse_scim_token
from domain.errors import Conflict, Invalid, Unauthenticated
from domain.scim import Group, ScimDirectory, role_from_groups


def test_the_highest_ranked_mapped_role_wins_and_no_mapping_gives_none() -> None:
    assert role_from_groups([]) is None
    assert role_from_groups([None, None]) is None
    assert role_from_groups(["guest", None, "premium", "user"]) == "premium"
    assert role_from_groups(["auditor", "admin"]) == "admin"
    assert role_from_groups(["pending", "guest"]) == "guest"


def test_user_names_are_unique_in_a_tenant_case_aside() -> None:
    tenant = str(uuid.uuid4())
    directory = ScimDirectory(tenant_id=tenant)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    directory.list_user(alice, _name_hash(tenant, "Alice"))
    with pytest.raises(Conflict) as taken:
        directory.list_user(bob, _name_hash(tenant, "ALICE"))
    assert taken.value.code == "SCIM_UNIQUENESS"
    directory.list_user(bob, _name_hash(tenant, "bob"))
    directory.rename_user(alice, _name_hash(tenant, "alice"))  # her own name, in other case: no event
    assert len(directory.collect_events()) == 3
    with pytest.raises(Conflict):
        directory.rename_user(bob, _name_hash(tenant, "aLiCe"))
    assert _name_hash(tenant, "alice") != _name_hash(str(uuid.uuid4()), "alice")  # per tenant
    directory.unlist_user(alice)
    directory.list_user(uuid.uuid4(), _name_hash(tenant, "alice"))  # free again


def test_group_names_are_unique_case_aside() -> None:
    directory = ScimDirectory(tenant_id="t")
    first = uuid.uuid4()
    directory.list_group(first, "Staff")
    with pytest.raises(Conflict):
        directory.list_group(uuid.uuid4(), "staff")
    directory.rename_group(first, "STAFF")


def test_a_groups_member_change_records_who_joined_and_who_left() -> None:
    group = Group(tenant_id="t", display_name="g", external_id=None, created_by="scimtoken:x")
    group.set_members(["a", "b", "b"])
    group.set_members(["b", "c"])
    group.set_members(["c", "b"])  # the same members: no event
    changes = [(e.added, e.removed) for e in group.collect_events()[1:]]
    assert changes == [(["a", "b"], []), (["c"], ["a"])]
    assert group.members == ["b", "c"]
    with pytest.raises(Invalid):
        group.map_role("overlord")
    group.map_role("premium")
    group.delete(deleted_by="x")
    assert group.deleted and group.members == []


def test_scim_tokens_name_their_id_and_anything_else_is_refused() -> None:
    token_id = uuid.uuid4()
    token = new_scim_token(token_id)
    assert token.startswith("ps_") and parse_scim_token(token) == token_id
    for bad in ("", "pk_" + token[3:], "ps_nothex_" + "x" * 40, f"ps_{token_id.hex}_short"):
        with pytest.raises(Unauthenticated):
            parse_scim_token(bad)


def test_a_users_email_comes_from_the_primary_email_else_a_user_name_that_is_one() -> None:
    def data(user_name: str, *emails: tuple[str, bool | None]) -> ScimUserData:
        return ScimUserData(user_name=user_name, emails=[{"value": v, "primary": p} for v, p in emails])

    assert _email(data("x", ("a@example.com", None), ("b@example.com", True))) == "b@example.com"
    assert _email(data("Carol@Example.com")) == "carol@example.com"
    with pytest.raises(Invalid):
        _email(data("carol", ("not an address", True)))
    assert _display_name(ScimUserData(user_name="u", emails=[], given_name="Ann", family_name="Lee")) == "Ann Lee"
    assert _display_name(ScimUserData(user_name="u9", emails=[], display_name="\u202eevil")) == "u9"  # bidi control refused
