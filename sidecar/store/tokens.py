"""The HTTP API's bearer tokens in the store: made long and random, shown once, kept
only as their SHA-256, scoped (``read``: every GET; ``admin``: the writes too), revoked
by name."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from .conn import Db
from .db import transaction

SCOPES = ("read", "admin")
#: Every token is at least this long (a token given in a file or the environment too).
MIN_TOKEN = 32
_PREFIX = "sct_"  # recognisable in a leaked log or a secret scanner
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class TokenError(ValueError):
    """A token command that cannot be done (says why)."""


def token_hash(token: str) -> str:
    """What the store keeps of a token (a token is 256 random bits: one SHA-256 is
    enough, no salt or stretching needed)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def create_token(conn: Db, name: str, scope: str, now_ms: int,
                 account: str | None = None) -> str:
    """Make a token; returns it (the only time it is seen: the store keeps its hash).
    With ``account``, the token reads only that account and the accounts below it (a
    reseller's view of its customers); such a token is read-only."""
    if not _NAME.fullmatch(name):
        raise TokenError(f"token name '{name}': letters, digits and _ . @ - (at most 64)")
    if scope not in SCOPES:
        raise TokenError(f"scope '{scope}': expected one of {', '.join(SCOPES)}")
    if account is not None and scope != "read":
        raise TokenError("a token scoped to an account reads only (--scope read)")
    token = _PREFIX + secrets.token_urlsafe(32)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone():
            raise TokenError(f"a token named '{name}' exists already (revoke it, or pick "
                             "another name)")
        if account is not None and conn.execute(
                "SELECT 1 FROM accounts WHERE code = ?", (account,)).fetchone() is None:
            raise TokenError(f"account '{account}' not found")
        conn.execute("INSERT INTO api_tokens (name, scope, hash, created_ms, account) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (name, scope, token_hash(token), now_ms, account))
    return token


def revoke_token(conn: Db, name: str, now_ms: int) -> None:
    with transaction(conn):
        row = conn.execute("SELECT revoked_ms FROM api_tokens WHERE name = ?",
                           (name,)).fetchone()
        if row is None:
            raise TokenError(f"no token named '{name}'")
        if row[0] is None:
            conn.execute("UPDATE api_tokens SET revoked_ms = ? WHERE name = ?",
                         (now_ms, name))


@dataclass(frozen=True)
class TokenInfo:
    """What is known of a token: never the token, nor its hash."""

    name: str
    scope: str
    created_ms: int
    revoked_ms: int | None
    account: str | None = None  # reads only this account and those below it


def list_tokens(conn: Db) -> list[TokenInfo]:
    """Every token, by name."""
    return [TokenInfo(str(n), str(s), int(c), None if r is None else int(r),
                      None if a is None else str(a))
            for n, s, c, r, a in conn.execute(
                "SELECT name, scope, created_ms, revoked_ms, account FROM api_tokens "
                "ORDER BY name")]


def active_tokens(conn: Db) -> dict[str, tuple[str, str, str]]:
    """The hashes of the tokens not revoked: hash -> (name, scope, account: "" for a
    token of the whole store)."""
    return {str(h): (str(n), str(s), str(a or "")) for h, n, s, a in conn.execute(
        "SELECT hash, name, scope, account FROM api_tokens WHERE revoked_ms IS NULL")}
