"""SCIM 2.0 provisioning through HTTP: the external conformance checker (scim2-tester) against parley's
endpoint, and parley's own promises — tenant isolation, deactivation revoking tokens, group -> role."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.e2e.test_tenant_isolation import bearer, login, register, two_tenants
from workers.bootstrap import Container

SCIM = "application/scim+json"
PASSWORD = "correct horse 9"


async def scim_token(client: httpx.AsyncClient, admin_tokens: dict[str, Any], name: str = "IdP") -> str:
    r = await client.post("/api/v1/scim/tokens", json={"name": name}, headers=bearer(admin_tokens))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def scim_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": SCIM}


def new_user(user_name: str, email: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "emails": [{"value": email, "primary": True}],
        "active": True,
        **extra,
    }


async def provision(client: httpx.AsyncClient, token: str, user_name: str, email: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/scim/v2/Users", json=new_user(user_name, email, **extra), headers=scim_headers(token))
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(SCIM)
    return dict(r.json())


def patch_op(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list(operations)}


async def test_scim2_tester_finds_no_failures(live: str, container: Container) -> None:
    async with httpx.AsyncClient(base_url=live) as client:
        await register(client, "root@example.com", name="Root")
        token = await scim_token(client, await login(client, "root@example.com"))

    def check() -> list[Any]:
        with httpx2.Client(base_url=f"{live}/scim/v2", headers={"Authorization": f"Bearer {token}"}) as http:
            return check_server(SyncSCIMClient(http))

    results = await asyncio.to_thread(check)
    failed = [f"{r.title} [{r.resource_type}]: {r.reason}" for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    assert not failed, "\n".join(failed)
    assert sum(r.status == Status.SUCCESS for r in results) >= 30


async def test_one_tenants_scim_token_never_sees_or_changes_anothers_users(client: httpx.AsyncClient) -> None:
    t = await two_tenants(client)
    acme, beta = await scim_token(client, t.a_admin), await scim_token(client, t.b_admin)
    alice = await provision(client, acme, "alice", "alice@acme.test", displayName="Alice")
    await provision(client, beta, "bob", "bob@beta.test")

    listed = (await client.get("/scim/v2/Users", headers=scim_headers(beta))).json()
    assert [r["userName"] for r in listed["Resources"]] == ["bob"] and listed["totalResults"] == 1
    found = await client.get("/scim/v2/Users", params={"filter": 'userName eq "alice"'}, headers=scim_headers(beta))
    assert found.json()["totalResults"] == 0
    for method, body in (("GET", None), ("PUT", new_user("alice", "alice@acme.test")), ("PATCH", patch_op({"op": "replace", "path": "active", "value": False})), ("DELETE", None)):
        r = await client.request(method, f"/scim/v2/Users/{alice['id']}", json=body, headers=scim_headers(beta))
        assert r.status_code == 404, (method, r.text)
        assert r.headers["content-type"].startswith(SCIM) and r.json()["status"] == "404"
    # a group in beta cannot take acme's user as a member
    r = await client.post(
        "/scim/v2/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "x", "members": [{"value": alice["id"]}]},
        headers=scim_headers(beta),
    )
    assert r.status_code == 400 and r.json()["scimType"] == "invalidValue"
    still = (await client.get(f"/scim/v2/Users/{alice['id']}", headers=scim_headers(acme))).json()
    assert still["active"] is True and still["displayName"] == "Alice"
    # a user token, an API key or nothing at all is no SCIM token; a revoked token stops working
    for headers in ({}, bearer(t.a_admin), {"Authorization": f"Bearer {t.a_key['key']}"}):
        r = await client.get("/scim/v2/Users", headers=headers)
        assert r.status_code == 401 and r.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    token_id = (await client.post("/api/v1/scim/tokens", json={"name": "doomed"}, headers=bearer(t.a_admin))).json()
    assert (await client.delete(f"/api/v1/scim/tokens/{token_id['id']}", headers=bearer(t.b_admin))).status_code == 404
    assert (await client.delete(f"/api/v1/scim/tokens/{token_id['id']}", headers=bearer(t.a_admin))).status_code == 204
    r = await client.get("/scim/v2/Users", headers=scim_headers(token_id["token"]))
    assert r.status_code == 401 and "REVOKED" in r.json()["detail"]
    # only a tenant admin issues tokens
    r = await client.post("/api/v1/scim/tokens", json={"name": "mine"}, headers=bearer(t.a_user_tokens))
    assert r.status_code == 403


async def test_deactivating_a_user_revokes_their_tokens_and_deleting_erases_them(client: httpx.AsyncClient) -> None:
    await register(client, "root@example.com", name="Root")
    admin = await login(client, "root@example.com")
    token = await scim_token(client, admin)
    carol = await provision(client, token, "carol", "carol@example.com")
    assert (await client.post("/api/v1/auths/login", json={"email": "carol@example.com", "password": PASSWORD})).status_code == 401
    # an admin gives her a password (as a migration might); she signs in
    r = await client.patch(f"/api/v1/users/{carol['id']}", json={"password": PASSWORD}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    session = await login(client, "carol@example.com")
    assert (await client.get("/api/v1/auths/me", headers=bearer(session))).status_code == 200

    r = await client.patch(
        f"/scim/v2/Users/{carol['id']}", json=patch_op({"op": "replace", "value": {"active": False}}), headers=scim_headers(token)
    )
    assert r.status_code == 200 and r.json()["active"] is False
    assert (await client.get("/api/v1/auths/me", headers=bearer(session))).status_code == 401
    assert (await client.post("/api/v1/auths/refresh", json={"refresh_token": session["refresh_token"]})).status_code in (401, 403)
    listed = await client.get("/scim/v2/Users", params={"filter": "active eq false"}, headers=scim_headers(token))
    assert [u["id"] for u in listed.json()["Resources"]] == [carol["id"]]

    assert (await client.delete(f"/scim/v2/Users/{carol['id']}", headers=scim_headers(token))).status_code == 204
    assert (await client.get(f"/scim/v2/Users/{carol['id']}", headers=scim_headers(token))).status_code == 404
    user = (await client.get(f"/api/v1/users/{carol['id']}", headers=bearer(admin))).json()
    assert user["active"] is False and user["email"] != "carol@example.com"  # erased


async def test_groups_map_to_roles_and_lists_filter_and_page(client: httpx.AsyncClient) -> None:
    await register(client, "root@example.com", name="Root")
    admin = await login(client, "root@example.com")
    token = await scim_token(client, admin)
    users = [await provision(client, token, f"user{i}", f"user{i}@example.com", displayName=f"User {i}") for i in range(5)]
    await provision(client, token, "zed", "zed@example.com", name={"givenName": "Zed", "familyName": "Zulu"})

    async def users_where(**params: Any) -> dict[str, Any]:
        r = await client.get("/scim/v2/Users", params=params, headers=scim_headers(token))
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert (await users_where(filter='userName eq "USER3"'))["Resources"][0]["id"] == users[3]["id"]  # case aside
    assert (await users_where(filter='userName sw "user"'))["totalResults"] == 5
    assert (await users_where(filter='displayName co "er 2"'))["totalResults"] == 1
    assert (await users_where(filter="name pr"))["totalResults"] == 1
    assert (await users_where(filter='userName eq "user1" or userName eq "zed"'))["totalResults"] == 2
    assert (await users_where(filter='userName sw "user" and displayName eq "User 4"'))["totalResults"] == 1
    page = await users_where(filter='userName sw "user"', startIndex=2, count=2)
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
    assert [u["userName"] for u in page["Resources"]] == ["user1", "user2"]
    bad = await client.get("/scim/v2/Users", params={"filter": 'userName eq "x" and'}, headers=scim_headers(token))
    assert bad.status_code == 400 and bad.json()["scimType"] == "invalidFilter"
    twin = await client.post("/scim/v2/Users", json=new_user("User1", "other@example.com"), headers=scim_headers(token))
    assert twin.status_code == 409 and twin.json()["scimType"] == "uniqueness"

    r = await client.post(
        "/scim/v2/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Power users",
              "members": [{"value": users[0]["id"]}, {"value": users[1]["id"]}]},
        headers=scim_headers(token),
    )
    assert r.status_code == 201, r.text
    group = r.json()

    async def role_of(user: dict[str, Any]) -> str:
        return str((await client.get(f"/api/v1/users/{user['id']}", headers=bearer(admin))).json()["role"])

    assert await role_of(users[0]) == "user"
    r = await client.put(f"/api/v1/scim/groups/{group['id']}/role", json={"role": "premium"}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert [await role_of(u) for u in users[:3]] == ["premium", "premium", "user"]
    # the provider adds one member and removes another: roles follow
    r = await client.patch(
        f"/scim/v2/Groups/{group['id']}",
        json=patch_op(
            {"op": "add", "path": "members", "value": [{"value": users[2]["id"]}]},
            {"op": "remove", "path": f'members[value eq "{users[0]["id"]}"]'},
        ),
        headers=scim_headers(token),
    )
    assert r.status_code == 200, r.text
    assert sorted(m["value"] for m in r.json()["members"]) == sorted([users[1]["id"], users[2]["id"]])
    assert [await role_of(u) for u in users[:3]] == ["user", "premium", "premium"]
    # a second mapped group ranking higher wins; deleting it gives the first group's role back
    r = await client.post(
        "/scim/v2/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Guests", "members": [{"value": users[1]["id"]}]},
        headers=scim_headers(token),
    )
    guests = r.json()
    await client.put(f"/api/v1/scim/groups/{guests['id']}/role", json={"role": "guest"}, headers=bearer(admin))
    assert await role_of(users[1]) == "premium"  # premium outranks guest
    await client.put(f"/api/v1/scim/groups/{group['id']}/role", json={"role": "admin"}, headers=bearer(admin))
    assert await role_of(users[1]) == "admin"
    assert (await client.delete(f"/scim/v2/Groups/{group['id']}", headers=scim_headers(token))).status_code == 204
    assert [await role_of(u) for u in users[1:3]] == ["guest", "user"]
    groups = (await client.get("/scim/v2/Groups", params={"filter": 'displayName eq "guests"'}, headers=scim_headers(token))).json()
    assert [g["id"] for g in groups["Resources"]] == [guests["id"]]
    r = await client.put(f"/api/v1/scim/groups/{guests['id']}/role", json={"role": "overlord"}, headers=bearer(admin))
    assert r.status_code == 422


async def test_patches_at_once_lose_no_member(client: httpx.AsyncClient) -> None:
    """Identity providers send a group's member changes at once: each PATCH applies to the group as it is
    in its own command, so whatever was answered 200 is in the group (a conflict twice over is a 409)."""
    await register(client, "root@example.com", name="Root")
    token = await scim_token(client, await login(client, "root@example.com"))
    users = [await provision(client, token, f"u{i}", f"u{i}@example.com") for i in range(6)]
    r = await client.post(
        "/scim/v2/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Crowd"},
        headers=scim_headers(token),
    )
    group = r.json()
    answers = await asyncio.gather(
        *(
            client.patch(
                f"/scim/v2/Groups/{group['id']}",
                json=patch_op({"op": "add", "path": "members", "value": [{"value": u["id"]}]}),
                headers=scim_headers(token),
            )
            for u in users
        )
    )
    assert {a.status_code for a in answers} <= {200, 409}
    added = {u["id"] for u, a in zip(users, answers, strict=True) if a.status_code == 200}
    assert len(added) >= 2
    final = (await client.get(f"/scim/v2/Groups/{group['id']}", headers=scim_headers(token))).json()
    assert {m["value"] for m in final.get("members", [])} == added
