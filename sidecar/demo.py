"""The demo: real Kamailio + the real sidecar + real SIPp calls with RTP, then the CDRs.

    bash scripts/demo            (or: python -m sidecar.demo [--keep DIR])

Starts Kamailio with the shipped configuration and ``sidecar run`` on a fresh SQLite
database holding the sample deck and a few accounts, places a handful of calls through
Kamailio (answered with media, refused for lack of credit, cut when credit runs out,
answered without media, ringback after answer, unknown account, a call crossing the end
of a free-minute bundle, a customer's call charged along a reseller chain: ``CALLS``)
and prints what was billed, then checks that every call came out as ``CALLS`` describes
it (exit status 1 and what differs, if one did not). Media supervision is on: the
sidecar captures the calls' RTP on ``lo``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .charging.model import AccountKind, Disposition
from .lab.live import LiveLab
from .money import fmt
from .rating.bundles import Bundle
from .store.accounts import SqliteLedger, add_account, verify_ledger
from .store.bundles import add_bundle
from .store.db import connect
from .store.decks import import_deck

console = Console(width=None if Console().is_terminal else 150)


def _prepare(db: Path) -> sqlite3.Connection:
    conn = connect(db)
    deck = resources.files("sidecar") / "data" / "sample-deck.csv"
    with resources.as_file(deck) as path:
        res = import_deck(conn, "demo", path)
    console.print(f"plan [bold]demo[/]: {res.lines} rate lines imported ({res.currency})")
    now = int(time.time() * 1000)
    ledger = SqliteLedger(conn)
    # Premium Test (999) costs 0.60/min = 0.01/s: 0.04 buys 4 seconds.
    for code, amount, note in [("ACME", "5.00", "a customer in good standing"),
                               ("BROKE", "0", "no credit"),
                               ("TIGHT", "0.04", "credit for 4 s on the premium route")]:
        add_account(conn, code, "demo", AccountKind.PREPAID, now_ms=now, name=note)
        if Decimal(amount):
            ledger.topup(code, Decimal(amount), now, "demo top-up")
        console.print(f"account [bold]{code}[/]: {amount} USD ({note})")
    # A free-minute bundle: 5 s to Germany, used before money.
    add_account(conn, "BUNDLE", "demo", AccountKind.PREPAID, now_ms=now,
                name="5 free seconds to Germany")
    ledger.topup("BUNDLE", Decimal("1"), now, "demo top-up")
    add_bundle(conn, "account", "BUNDLE", Bundle("germany", 5, prefixes=("49",)), now_ms=now)
    console.print("account [bold]BUNDLE[/]: 1 USD and a bundle of 5 s to Germany")
    # A reseller chain: RESELLER buys on plan 'wholesale' (0.0050/min to Berlin) and sells
    # to its customer RCUST on the demo plan (0.0095/min).
    with tempfile.TemporaryDirectory() as tmp:
        deck = Path(tmp) / "wholesale.csv"
        deck.write_text("destination;code;rate_usd;increment;effective_from\n"
                        "Germany;49;0.0050;1/1;2026-01-01\n")
        import_deck(conn, "wholesale", deck)
    add_account(conn, "RESELLER", "wholesale", AccountKind.PREPAID, now_ms=now,
                name="a reseller", reseller=True)
    ledger.topup("RESELLER", Decimal("2"), now, "demo top-up")
    add_account(conn, "RCUST", "demo", AccountKind.PREPAID, now_ms=now, parent="RESELLER",
                name="the reseller's customer")
    ledger.topup("RCUST", Decimal("1"), now, "demo top-up")
    console.print("account [bold]RESELLER[/]: 2 USD, a reseller on plan wholesale; "
                  "[bold]RCUST[/] below it: 1 USD")
    return conn


@dataclass(frozen=True)
class DemoCall:
    """One call of the demo: what is placed, and what it must come out as (the caller's
    final reply and the call's CDR)."""

    title: str
    account_code: str  # the account code the caller sends
    dialled: str
    callee: str | None  # the callee's SIPp scenario (None: the proxy answers)
    seconds: int  # how long the caller stays (0: a call that is refused)
    code: int  # the final reply the caller gets, and the CDR's SIP code
    disposition: Disposition
    known: bool = True  # the account code names an account (False: the CDR has none)
    ended_by: str = ""  # "proxy": the sidecar ended the call (credit gone)
    charged: Decimal | None = None  # exactly this much charged (None: more than 0)
    credited_all: bool = False  # FAS: whatever was charged is credited back
    bundle_seconds: int = 0
    reseller: str = ""  # a reseller charged for the call too (cdr_tiers)

    @property
    def account(self) -> str | None:
        """The CDR's account."""
        return self.account_code if self.known else None


BERLIN = "+4930123456"
ANSWERED, REJECTED = Disposition.ANSWERED, Disposition.REJECTED
CALLS = [
    DemoCall("ACME calls Berlin: answered with media, 3 s", "ACME", BERLIN, "uas.xml", 3,
             200, ANSWERED),
    DemoCall("BROKE calls Berlin: no credit -> 402", "BROKE", BERLIN, None, 0, 402,
             REJECTED, charged=Decimal(0)),
    DemoCall("TIGHT calls the premium route for 15 s: cut when credit runs out", "TIGHT",
             "+999123456", "uas.xml", 15, 200, ANSWERED, ended_by="proxy",
             charged=Decimal("0.04")),
    DemoCall("ACME calls the UK: answered, but the carrier sends no media -> not billed",
             "ACME", "+447700900123", "uas_nomedia.xml", 2, 200, Disposition.NO_MEDIA,
             charged=Decimal(0)),
    DemoCall("ACME calls Berlin: the carrier answers, then plays ringback -> FAS, charge "
             "credited", "ACME", BERLIN, "uas_ringback.xml", 4, 200, ANSWERED,
             credited_all=True),
    DemoCall("An unknown account code -> 403", "NOBODY", BERLIN, None, 0, 403, REJECTED,
             known=False, charged=Decimal(0)),
    DemoCall("BUNDLE calls Berlin for 8 s: 5 s from its bundle, the rest paid", "BUNDLE",
             BERLIN, "uas.xml", 8, 200, ANSWERED, bundle_seconds=5),
    DemoCall("RCUST calls Berlin: charged to RCUST and to its reseller, each at its own "
             "price", "RCUST", BERLIN, "uas.xml", 3, 200, ANSWERED, reseller="RESELLER"),
]


def _call(lab: LiveLab, n: int, call: DemoCall) -> int | None:
    """Place one call; the final reply the caller got (None: none came)."""
    console.rule(f"{n}. {call.title}")
    uas = call.callee
    uac: dict[str, object] = {"account_code": call.account_code, "dialled": call.dialled}
    if call.seconds:
        uac["duration_ms"] = call.seconds * 1000
    callee = lab.uas(uas) if uas else None
    scenario = "uac.xml" if uas else "uac_reject.xml"
    t0 = time.monotonic()
    r = lab.uac(scenario, **uac).wait()
    if callee is not None:
        callee.stop()
    codes = r.final_codes
    talk = f", talked {r.talk_time_s:.2f} s (SIPp)" if r.talk_time_s else ""
    byes = [m for m in r.received("BYE") if not m.is_response]
    cut = ", BYE from the proxy" if byes else ""
    console.print(f"SIP final reply {codes[-1] if codes else '-'}{talk}{cut} "
                  f"[{time.monotonic() - t0:.1f} s]")
    return codes[-1] if codes else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None,
                    help="Run in this directory and keep it (database, logs).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp:
        run = (args.keep or Path(tmp)).resolve()
        run.mkdir(parents=True, exist_ok=True)
        db = run / "demo.db"
        db.unlink(missing_ok=True)
        conn = _prepare(db)
        media = '[media]\nenabled = true\ninterface = "lo"\n'
        with LiveLab(run / "lab", db, extra_config=media) as lab:
            console.print(f"Kamailio on {lab.target} (pid {lab.kam.pid}), sidecar connected "
                          f"over evapi :{lab.settings.evapi_port}")
            finals = [_call(lab, n, c) for n, c in enumerate(CALLS, 1)]
            time.sleep(0.5)  # let the last end event land
        _report(conn)
        if args.keep:
            console.print(f"kept: {run}")
        problems = check(conn, finals)
    if problems:
        console.print("[red]the demo did not come out as described:[/]")
        for p in problems:
            console.print(f"[red]  - {p}[/]")
        raise SystemExit(1)
    console.print(f"all {len(CALLS)} calls came out as described above")


def check(conn: sqlite3.Connection, finals: list[int | None]) -> list[str]:
    """What differs from what the demo says it shows (empty: all of it came out so): the
    replies the callers got, one CDR per call with the outcome and money described, every
    balance at zero or above, and every balance the sum of its ledger."""
    problems = []
    for n, (want, got) in enumerate(zip(CALLS, finals, strict=True), 1):
        if got != want.code:
            problems.append(f"call {n}: the caller got {got or 'no final reply'}, "
                            f"not {want.code}")
    rows = conn.execute(
        "SELECT account, disposition, sip_code, billed_seconds, bundle_seconds, charged, "
        "credited, ended_by, call_ref FROM cdrs ORDER BY id").fetchall()
    if len(rows) != len(CALLS):
        return [*problems, f"{len(rows)} CDRs for {len(CALLS)} calls"]
    tiers = {(ref, acc) for ref, acc in conn.execute(
        "SELECT call_ref, account FROM cdr_tiers WHERE charged > 0")}
    for n, (want, row) in enumerate(zip(CALLS, rows, strict=True), 1):
        acc, disp, code, billed, bundled, charged, credited, by, ref = row
        charged, credited = Decimal(str(charged)), Decimal(str(credited))
        cdr: dict[str, object] = {"account": acc, "disposition": disp, "SIP code": code,
                                  "bundle seconds": bundled}
        wanted = {"account": want.account, "disposition": want.disposition,
                  "SIP code": want.code, "bundle seconds": want.bundle_seconds}
        problems += [f"call {n}: CDR {k} {cdr[k] or '-'}, not {v or '-'}"
                     for k, v in wanted.items() if cdr[k] != v]
        if (by == "proxy") != (want.ended_by == "proxy"):
            problems.append(f"call {n}: ended by {by or '-'}, " + (
                "not by the proxy" if want.ended_by else "cut short by the proxy"))
        if want.charged is not None and charged != want.charged:
            problems.append(f"call {n}: charged {fmt(charged)}, not {fmt(want.charged)}")
        if want.charged is None and charged <= 0:
            problems.append(f"call {n}: nothing charged")
        if want.credited_all != (credited == charged > 0):
            problems.append(f"call {n}: charged {fmt(charged)}, credited {fmt(credited)}")
        if want.disposition is ANSWERED and not want.ended_by and billed < want.seconds:
            problems.append(f"call {n}: {billed} s billed for a {want.seconds} s call")
        if want.reseller and (ref, want.reseller) not in tiers:
            problems.append(f"call {n}: reseller {want.reseller} not charged")
    problems += [f"account {code}: balance {fmt(Decimal(str(bal)))} below zero"
                 for code, bal in conn.execute("SELECT code, balance FROM accounts")
                 if Decimal(str(bal)) < 0]
    problems += [f"ledger of {c.account}: {'; '.join(c.problems)}"
                 for c in verify_ledger(conn) if c.problems]
    return problems


def _money(stored: object) -> str:
    """A stored amount as people read it (``money.fmt``: no exponent, no trailing zeros)."""
    return fmt(Decimal(str(stored)))


def _report(conn: sqlite3.Connection) -> None:
    console.rule("CDRs")
    t = Table("account", "callee", "destination", "result", "SIP", "duration", "billed",
              "cost", "charged", "credited", "FAS", "ended by")
    for row in conn.execute(
            "SELECT account, callee, destination, disposition, sip_code, duration_ms, "
            "billed_seconds, bundle_seconds, cost, charged, credited, fas_verdict, "
            "fas_reasons, ended_by, end_reason FROM cdrs ORDER BY id"):
        (acc, callee, dest, disp, code, dur, billed, bundled, cost, charged, credited, fas,
         why, by, reason) = row
        t.add_row(acc or "-", callee, dest, disp, str(code or ""), f"{dur / 1000:.3f} s",
                  f"{billed} s" + (f" ({bundled} s bundle)" if bundled else ""),
                  _money(cost), _money(charged), _money(credited),
                  f"{fas}: {why}"[:60] if fas else "", f"{by} ({reason})" if by else reason[:40])
    console.print(t)
    r = Table("call of", "tier", "reseller", "plan", "billed", "cost", "charged", "margin")
    for row in conn.execute(
            "SELECT c.account, t.tier, t.account, t.plan, t.billed_seconds, t.cost, "
            "t.charged, t.margin FROM cdr_tiers t JOIN cdrs c ON c.call_ref = t.call_ref "
            "ORDER BY c.id, t.tier"):
        acc, tier, reseller, plan, billed, cost, charged, margin = row
        r.add_row(acc, str(tier), reseller, plan, f"{billed} s", _money(cost),
                  _money(charged), "" if margin is None else _money(margin))
    if r.row_count:
        console.print(r)
    b = Table("account", "balance", "held")
    for code, bal, held in conn.execute("SELECT code, balance, held FROM accounts ORDER BY code"):
        b.add_row(code, _money(bal), _money(held))
    console.print(b)
    bad = [c for c in verify_ledger(conn) if c.problems]
    console.print("ledger verified: every balance is the sum of its ledger rows" if not bad
                  else f"[red]ledger problems: {bad}[/]")


if __name__ == "__main__":
    main()
