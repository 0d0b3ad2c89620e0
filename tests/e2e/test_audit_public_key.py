"""The audit checkpoint key over HTTP: any signed-in caller gets the public key that checks checkpoints,
the same one ``parley audit public-key`` prints and the checkpointer signs with."""

from __future__ import annotations

import httpx

from adapters.checkpoints import CHECKPOINT_FORMAT, CheckpointKey, check_checkpoint, load_public_key
from workers.bootstrap import Container


async def test_a_signed_in_user_gets_the_key_that_checks_audit_checkpoints(
    client: httpx.AsyncClient, container: Container
) -> None:
    assert (await client.get("/api/v1/audit/public-key")).status_code == 401
    account = {"email": "ada@example.com", "password": "correct horse 9"}
    r = await client.post("/api/v1/auths/register", json={**account, "name": "Ada"})
    assert r.status_code == 201, r.text
    tokens = (await client.post("/api/v1/auths/login", json=account)).json()
    r = await client.get("/api/v1/audit/public-key", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    key = CheckpointKey.from_secret(container.settings.secret_key)
    assert body == {
        "algorithm": "Ed25519",
        "key_id": key.key_id,
        "public_key_pem": key.public_pem(),
        "public_key_base64": key.public_base64(),
        "checkpoint_format": CHECKPOINT_FORMAT,
    }
    served = load_public_key(body["public_key_pem"].encode())
    assert check_checkpoint(key.sign("acme", 1, "0" * 64), served) is None
