"""Usage limits and fraud events in the store, on SQLite and PostgreSQL alike.

- An account's own limit set is ``accounts.limits``, a plan's default set ``plans.limits``
  (JSON, what :meth:`~sidecar.charging.limits.Limits.to_json` writes; '' = none set).
  :func:`effective_limits` resolves what applies to an account: its own keys, else its
  parents' (up the tree), else its plan's, and says where each key comes from.
- A fraud rule that trips is a ``fraud_events`` row, written by the live sidecar's
  store batch (``Flag``, once per key) with the action it took on the account
  (``blocked``, or ``suspended`` with a reason starting ``fraud rule``).
  :func:`lift_fraud` is the operator's explicit lift: the account accepts calls again
  and its blocks and suspensions are marked lifted, by whom and why.

Every change goes through the ``accounts`` or ``plans`` table, so a running sidecar
hears of it as of any other change (PostgreSQL's triggers, SQLite's ``data_version``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..charging.limits import KEYS, Limits, effective
from ..charging.model import Account
from ..numbers import country_code
from .accounts import MAX_TIERS, AccountNotFound, get_account
from .conn import Db, filters
from .db import transaction
from .decks import get_plan
from .dialect import dialect_of, stored_limits


def limits_text(limits: Limits) -> str:
    """A limit set as stored ('' when it sets nothing)."""
    return limits.to_json() if limits.explicit else ""


# --- the own sets ------------------------------------------------------------------------

def set_account_limits(conn: Db, code: str, limits: Limits) -> Account:
    """Replace account ``code``'s own limit set (:class:`AccountNotFound`)."""
    with transaction(conn):
        n = conn.execute("UPDATE accounts SET limits = ? WHERE code = ?",
                         (limits_text(limits), code)).rowcount
    if n == 0:
        raise AccountNotFound(f"account '{code}' not found")
    return get_account(conn, code)


def update_account_limits(conn: Db, code: str, changes: Mapping[str, object],
                          unset: Iterable[str] = ()) -> Limits:
    """Change some keys of account ``code``'s own set (``changes`` as
    :meth:`Limits.parse` takes them; ``unset`` keys inherited again), in one
    transaction. A bad value raises :class:`~sidecar.charging.limits.LimitsError`
    naming the key, and nothing is changed."""
    d = dialect_of(conn)
    with transaction(conn):
        row = conn.execute(f"SELECT limits FROM accounts WHERE code = ?{d.for_update}",
                           (code,)).fetchone()
        if row is None:
            raise AccountNotFound(f"account '{code}' not found")
        new = stored_limits(row[0], f"account {code} limits").updated(changes, unset)
        conn.execute("UPDATE accounts SET limits = ? WHERE code = ?", (limits_text(new), code))
    return new


def update_plan_limits(conn: Db, plan: str, changes: Mapping[str, object],
                       unset: Iterable[str] = ()) -> Limits:
    """:func:`update_account_limits` for a plan's default set (bumps its revision, so
    live sidecars load it; :class:`~sidecar.store.decks.PlanNotFound`)."""
    get_plan(conn, plan)
    d = dialect_of(conn)
    with transaction(conn):
        row = conn.execute(f"SELECT limits FROM plans WHERE name = ?{d.for_update}",
                           (plan,)).fetchone()
        new = stored_limits(row[0] if row else "", f"plan {plan} limits").updated(
            changes, unset)
        conn.execute("UPDATE plans SET limits = ?, revision = revision + 1 WHERE name = ?",
                     (limits_text(new), plan))
    return new


# --- what applies --------------------------------------------------------------------------

def effective_limits(conn: Db, code: str) -> tuple[Limits, Limits, dict[str, str]]:
    """Account ``code``'s own limits, the limits that apply to it, and where each key
    that is set somewhere comes from (``"account CODE"`` or ``"plan NAME"``): its own
    set, then its parent's and so on up the tree, then its plan's."""
    d = dialect_of(conn)
    with d.snapshot(conn):
        acc = get_account(conn, code)
        chain = [acc.limits]
        labels = [f"account {code}"]
        seen = {code}
        up = acc.parent
        while up is not None and up not in seen and len(seen) <= MAX_TIERS:
            row = conn.execute("SELECT parent, limits FROM accounts WHERE code = ?",
                               (up,)).fetchone()
            if row is None:
                break
            chain.append(stored_limits(row[1], f"account {up} limits"))
            labels.append(f"account {up}")
            seen.add(up)
            up = None if row[0] is None or row[0] == "" else str(row[0])
        row = conn.execute("SELECT limits FROM plans WHERE name = ?", (acc.plan,)).fetchone()
        chain.append(stored_limits(row[0] if row else "", f"plan {acc.plan} limits"))
        labels.append(f"plan {acc.plan}")
    eff, where = effective(chain)
    return acc.limits, eff, {k: labels[where[k]] for k in KEYS if k in where}


def limits_json(conn: Db, *, account: str | None = None, plan: str | None = None
                ) -> dict[str, Any]:
    """What ``sidecar limits show --json`` and ``GET /v1/accounts/{code}/limits``
    answer: ``{"account"|"plan": ..., "own": ..., "effective": ..., "source": ...}``."""
    if account is not None:
        own, eff, source = effective_limits(conn, account)
        return {"account": account, "own": own.to_dict(), "effective": eff.to_dict(),
                "source": source}
    if plan is None:
        raise ValueError("name an account or a plan")
    lim = get_plan(conn, plan).limits
    return {"plan": plan, "own": lim.to_dict(), "effective": lim.to_dict(),
            "source": {k: f"plan {plan}" for k in KEYS if k in lim.explicit}}


# --- fraud events --------------------------------------------------------------------------

_EVENT_COLUMNS = ("id, ts_ms, account, rule, action, reason, evidence, node, key, lifted_ms, "
                  "lifted_by, lift_note")
#: Events that hold an account now: blocks and suspensions not lifted yet.
_OPEN = "lifted_ms IS NULL AND action IN ('block', 'suspend')"


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _evidence(text: object) -> object:
    try:
        return json.loads(str(text))
    except ValueError:
        return str(text)  # not JSON (written by hand): as it is


def fraud_events(conn: Db, account: str | None = None, from_ms: int | None = None,
                 to_ms: int | None = None, open_only: bool = False) -> list[dict[str, Any]]:
    """Fraud events oldest first, with their evidence as JSON; ``from_ms`` inclusive,
    ``to_ms`` exclusive; ``open_only``: the blocks and suspensions not lifted yet."""
    where, args = filters(("account = ?", account), ("ts_ms >= ?", from_ms),
                          ("ts_ms < ?", to_ms))
    if open_only:
        where += f" AND {_OPEN}"
    q = f"SELECT {_EVENT_COLUMNS} FROM fraud_events WHERE {where}"
    out = []
    for (id_, ts, acc, rule, action, reason, evidence, node, key, lifted, by,
         note) in conn.execute(q + " ORDER BY ts_ms, id", args):
        lifted_ms = None if lifted is None else int(lifted)
        out.append({
            "id": int(id_), "time": _iso(int(ts)), "ts_ms": int(ts), "account": str(acc),
            "rule": str(rule), "action": str(action), "reason": str(reason),
            "evidence": _evidence(evidence), "node": str(node), "key": str(key),
            "open": lifted_ms is None and action in ("block", "suspend"),
            "lifted": _iso(lifted_ms), "lifted_ms": lifted_ms, "lifted_by": str(by),
            "lift_note": str(note)})
    return out


def lift(conn: Db, code: str, by: str, note: str, now_ms: int) -> dict[str, Any]:
    """The operator lifts what fraud rules did to account ``code``, in one transaction:
    new calls are no longer blocked; a suspension by a fraud rule (its reason starts
    ``fraud rule``) is resumed, one by an operator or a spend cap stays; the account's
    open blocks and suspensions are marked lifted (when, ``by`` whom, ``note``).

    Returns ``{"account", "lifted" (events), "unblocked" (the block's reason or None),
    "resumed" (the suspension's reason or None), "still_suspended" (reason or None)}``.
    """
    d = dialect_of(conn)
    with transaction(conn):
        row = conn.execute("SELECT blocked, suspended, suspend_reason FROM accounts "
                           f"WHERE code = ?{d.for_update}", (code,)).fetchone()
        if row is None:
            raise AccountNotFound(f"account '{code}' not found")
        blocked, suspended, reason = str(row[0] or ""), bool(row[1]), str(row[2] or "")
        resume = suspended and reason.startswith("fraud rule ")
        if resume:
            conn.execute("UPDATE accounts SET blocked = '', suspended = 0, "
                         "suspend_reason = '' WHERE code = ?", (code,))
        elif blocked:
            conn.execute("UPDATE accounts SET blocked = '' WHERE code = ?", (code,))
        lifted = conn.execute(
            f"UPDATE fraud_events SET lifted_ms = ?, lifted_by = ?, lift_note = ? "
            f"WHERE account = ? AND {_OPEN}", (now_ms, by, note, code)).rowcount
    return {"account": code, "lifted": int(lifted), "unblocked": blocked or None,
            "resumed": reason if resume else None,
            "still_suspended": reason if suspended and not resume else None}


def lift_fraud(conn: Db, code: str, by: str, note: str, now_ms: int) -> int:
    """:func:`lift`; returns how many events were lifted."""
    return int(lift(conn, code, by, note, now_ms)["lifted"])


def countries_called(conn: Db, since_ms: int) -> dict[tuple[str, str], int]:
    """(account, country code) -> the last answered call to it since ``since_ms``, from
    the CDRs: the history the new-country rule starts from."""
    out: dict[tuple[str, str], int] = {}
    rows = conn.execute(
        "SELECT account, prefix, MAX(offered_ms) FROM cdrs WHERE account IS NOT NULL "
        "AND disposition = 'answered' AND offered_ms >= ? GROUP BY account, prefix",
        (since_ms,))
    for account, prefix, last in rows:
        cc = country_code(str(prefix or ""))
        if cc is None or last is None:
            continue
        key = (str(account), cc)
        if out.get(key, -1) < int(last):
            out[key] = int(last)
    return out


def calls_elsewhere(conn: Db, node: str) -> dict[str, int]:
    """Per account, the answered calls other nodes hold reservations for (the
    concurrent-call limit counts them beside this node's own)."""
    rows = conn.execute("SELECT account, COUNT(*) FROM live_calls WHERE node <> ? AND "
                        "node <> '' GROUP BY account", (node,))
    return {str(account): int(n) for account, n in rows}
