"""The API's bearer tokens: made by the CLI, long and random, shown once and stored only
as their hash, scoped read or admin, revoked without a restart; tokens given in a file
must be long too. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.api import make_app
from sidecar.store.conn import Db
from sidecar.store.tokens import create_token, list_tokens, revoke_token, token_hash
from tests.api.test_api import serve
from tests.api.test_limits_api import call
from tests.conftest import target_of


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_is_shown_once_and_the_store_keeps_only_its_hash(store: Db) -> None:
    target = target_of(store)
    env = {**os.environ, "SIDECAR_DB": str(target)}
    p = subprocess.run(["sidecar", "token", "create", "billing", "--scope", "admin"],
                       capture_output=True, text=True, env=env, timeout=60, check=True)
    token = p.stdout.strip()
    assert token.startswith("sct_") and len(token) >= 40
    assert "not shown again" in p.stderr
    rows = store.execute("SELECT name, scope, hash FROM api_tokens").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("billing", "admin")]
    assert rows[0][2] == token_hash(token) != token
    if "://" not in target:  # nowhere in the database's files
        for f in Path(target).parent.glob(Path(target).name + "*"):
            assert token.encode() not in f.read_bytes(), f
    listing = subprocess.run(["sidecar", "token", "list", "--json"], capture_output=True,
                             text=True, env=env, timeout=60, check=True).stdout
    (info,) = json.loads(listing)
    assert (info["name"], info["scope"], info["revoked"]) == ("billing", "admin", None)
    assert token not in listing and token_hash(token) not in listing
    again = subprocess.run(["sidecar", "token", "create", "billing"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert again.returncode == 2 and "exists already" in again.stderr
    # Two tokens made alike are different.
    assert create_token(store, "other", "read", 0) != create_token(store, "third", "read", 0)


def test_scopes_and_revocation_without_a_restart(store: Db) -> None:
    reader = create_token(store, "reader", "read", 0)
    admin = create_token(store, "admin", "admin", 0)
    gone = create_token(store, "gone", "read", 0)

    async def main() -> None:
        async with serve(make_app(store, refresh_s=0.1)) as base, \
                aiohttp.ClientSession() as http:
            await call(http, "GET", base + "/v1/accounts", 200, bearer(reader))
            await call(http, "GET", base + "/v1/accounts", 200, bearer(admin))
            err = await call(http, "PUT", base + "/v1/accounts/NOPE/limits", 403,
                             bearer(reader), "{}")
            assert "needs an admin token" in err["error"]
            await call(http, "PUT", base + "/v1/accounts/NOPE/limits", 404, bearer(admin),
                       "{}")  # past the token check: the account does not exist
            await call(http, "GET", base + "/v1/accounts", 200, bearer(gone))
            revoke_token(store, "gone", 1)
            deadline = time.monotonic() + 5
            while True:
                async with http.get(base + "/v1/accounts", headers=bearer(gone)) as r:
                    if r.status == 401:
                        break
                assert time.monotonic() < deadline, "a revoked token was still accepted"
                await asyncio.sleep(0.05)
            await call(http, "GET", base + "/v1/accounts", 200, bearer(reader))
            await call(http, "GET", base + "/v1/accounts", 401, bearer(reader[:-1]))
            await call(http, "GET", base + "/v1/accounts", 401, {"Authorization": "Bearer"})
    asyncio.run(main())
    assert [t.revoked_ms is not None for t in list_tokens(store)] == [False, True, False]


def test_short_or_missing_tokens_are_refused(store: Db, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a token"):
        make_app(store)
    with pytest.raises(ValueError, match="read token must be at least 32 characters"):
        make_app(store, "x")
    env = {**os.environ, "SIDECAR_DB": str(target_of(store)), "SIDECAR_API_TOKEN": "x"}
    p = subprocess.run(["sidecar", "api", "--listen", "127.0.0.1:0"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 2 and "at least 32 characters (it has 1)" in p.stderr
