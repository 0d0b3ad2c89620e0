"""LDAP settings and group -> role rules (domain/ldap.py), without a directory."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import Invalid
from domain.ldap import check_ldap_settings, normalize_dn, role_for_groups

BASE = {"url": "ldap://ldap.example.org", "bind_dn": "cn=reader,dc=example,dc=org", "search_base": "dc=example,dc=org"}


def test_settings_are_completed_with_their_defaults() -> None:
    settings = check_ldap_settings(BASE)
    assert settings["url"] == "ldap://ldap.example.org:389"
    assert check_ldap_settings(BASE | {"url": "ldaps://LDAP.example.org"})["url"] == "ldaps://ldap.example.org:636"
    assert (settings["user_filter"], settings["email_attribute"], settings["name_attribute"]) == ("(uid={login})", "mail", "cn")
    assert (settings["create_users"], settings["enabled"], settings["verify_tls"], settings["start_tls"]) == (True, True, True, False)
    assert settings["group_roles"] == {} and settings["default_role"] is None and settings["timeout_s"] == 5.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ldap://[::1"}, "url"),
        ({"url": "ldap://host/dc=x"}, "url"),
        ({"url": "ldap://user@host"}, "url"),
        ({"url": "ftp://host"}, "url"),
        ({"bind_dn": "reader"}, "bind_dn"),
        ({"search_base": ""}, "search_base"),
        ({"user_filter": "uid={login}"}, "user_filter"),
        ({"user_filter": "(uid=alice)"}, "user_filter"),
        ({"user_filter": "(&(uid={login})"}, "user_filter"),
        ({"user_filter": "(uid={user})"}, "user_filter"),
        ({"disabled_filter": "employeeType=disabled"}, "disabled_filter"),
        ({"email_attribute": "mail;binary"}, "email_attribute"),
        ({"group_roles": {"cn=staff,dc=x": "emperor"}}, "group_roles"),
        ({"group_roles": {"staff": "user"}}, "group_roles"),
        ({"default_role": "king"}, "default_role"),
        ({"start_tls": True, "url": "ldaps://host"}, "start_tls"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 31}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"create_users": "yes"}, "create_users"),
        ({"tls_ca_pem": "-----BEGIN PRIVATE KEY-----"}, "tls_ca_pem"),
        ({"bind_dn": "cn=a\x00,dc=x"}, "bind_dn"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as refused:
        check_ldap_settings(BASE | change)
    assert refused.value.detail["field"] == field


def test_group_dns_compare_without_case_or_spaces_and_the_strongest_role_wins() -> None:
    roles = check_ldap_settings(BASE | {"group_roles": {"CN=Staff, OU=Groups,dc=x": "premium", "cn=admins,dc=x": "admin"}})["group_roles"]
    assert roles == {"cn=staff,ou=groups,dc=x": "premium", "cn=admins,dc=x": "admin"}
    assert role_for_groups(roles, ["cn=staff,ou=groups,dc=x"]) == "premium"
    assert role_for_groups(roles, ["cn=STAFF,ou=groups,dc=x", "cn=Admins, dc=x"]) == "admin"
    assert role_for_groups(roles, ["cn=other,dc=x"]) is None
    assert role_for_groups(roles, []) is None
    assert normalize_dn("CN=Ann Lee , OU=People,DC=x") == "cn=ann lee,ou=people,dc=x"
