"""Issuing invoices and credit notes: sequential numbers, frozen documents.

An issued document is a row of the ``invoices`` table holding the invoice model as JSON
and its call detail (zlib-compressed JSON), with the SHA-256 of both. Rows are never
updated or deleted (triggers refuse it); numbers come from ``invoice_sequences`` and are
never reused. A correction is a credit note that refers to the invoice it corrects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ..money import ZERO
from ..store.conn import Db
from ..store.db import transaction
from .build import InvoiceError, InvoiceNotFound, InvoiceSettings, build_invoice
from .model import Invoice, Line, Period, Statement, from_json, present, to_json
from .records import CallRow

PREFIXES = {"invoice": "INV", "credit_note": "CN"}


@dataclass(frozen=True)
class Issued:
    """A document with its call detail, as issued (or as a draft when ``draft``)."""

    invoice: Invoice
    detail: list[CallRow]
    sha256: str
    new: bool = False  # issued by this call (False: it existed already)


def _detail_json(detail: list[CallRow]) -> bytes:
    return json.dumps(detail, separators=(",", ":"), ensure_ascii=False).encode()


def content_sha256(data_json: str, detail_json: bytes) -> str:
    """The hash an issued document is known by: its frozen data and its call detail."""
    h = hashlib.sha256(data_json.encode())
    h.update(b"\0")
    h.update(hashlib.sha256(detail_json).digest())
    return h.hexdigest()


def _next_number(conn: Db, kind: str, issuer: str = "") -> tuple[int, str]:
    """The next number of a series (inside the issuing transaction): the store's own
    (``INV-000042``), or a reseller's (``RES-INV-000007``: its documents to its customers
    numbered in a series of their own, without gaps). ``seq`` counts every document of
    the kind, whoever issued it."""
    row = conn.execute("SELECT last FROM invoice_sequences WHERE kind = ?", (kind,)).fetchone()
    top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM invoices WHERE kind = ?",
                       (kind,)).fetchone()[0]
    # Never below a number already issued, even if the sequence row was lost.
    seq = max(int(row[0]) if row else 0, int(top)) + 1
    conn.execute("INSERT INTO invoice_sequences (kind, last) VALUES (?, ?) "
                 "ON CONFLICT (kind) DO UPDATE SET last = excluded.last", (kind, seq))
    if not issuer:
        return seq, f"{PREFIXES[kind]}-{seq:06d}"
    series = f"{kind}@{issuer}"
    row = conn.execute("SELECT last FROM invoice_sequences WHERE kind = ?",
                       (series,)).fetchone()
    n = (int(row[0]) if row else 0) + 1
    number = f"{issuer}-{PREFIXES[kind]}-{n:06d}"
    while conn.execute("SELECT 1 FROM invoices WHERE number = ?", (number,)).fetchone():
        n += 1  # (the series row was lost: never a number twice)
        number = f"{issuer}-{PREFIXES[kind]}-{n:06d}"
    conn.execute("INSERT INTO invoice_sequences (kind, last) VALUES (?, ?) "
                 "ON CONFLICT (kind) DO UPDATE SET last = excluded.last", (series, n))
    return seq, number


def _store(conn: Db, doc: Invoice, detail_json: bytes, seq: int) -> str:
    data = to_json(doc)
    sha = content_sha256(data, detail_json)
    conn.execute(
        "INSERT INTO invoices (number, kind, seq, account, period, issued_ms, refers_to, "
        "currency, net, tax, total, calls, sha256, data, detail) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (doc.number, doc.kind, seq, doc.account, doc.period, doc.issued_ms,
         doc.refers_to or None, doc.currency, format(doc.net, "f"), format(doc.tax, "f"),
         format(doc.total, "f"), doc.calls, sha, data, zlib.compress(detail_json, 6)))
    return sha


def find_invoice(conn: Db, account: str, period: Period | str) -> str | None:
    """The number of the latest invoice issued to ``account`` for ``period``, if any."""
    row = conn.execute("SELECT number FROM invoices WHERE kind = 'invoice' AND account = ? "
                       "AND period = ? ORDER BY seq DESC LIMIT 1",
                       (account, str(period))).fetchone()
    return None if row is None else str(row[0])


def issue_invoice(
    conn: Db,
    account: str,
    period: Period,
    settings: InvoiceSettings,
    *,
    now_ms: int,
    reissue: bool = False,
) -> Issued:
    """The invoice of ``account`` for ``period``: the one already issued (re-rendering an
    issued invoice gives the same document), else a new one with the next number.

    A new invoice needs the period to be over. ``reissue`` issues a new invoice for a
    period whose earlier invoice has been fully credited by credit notes."""
    existing = find_invoice(conn, account, str(period))
    if existing and not reissue:
        return load_invoice(conn, existing)
    if now_ms < period.end_ms:
        raise InvoiceError(
            f"period {period} has not ended yet (it ends {period.end:%Y-%m-%d %H:%M} UTC): "
            f"calls may still be added; render a draft instead")
    if existing and open_amount(conn, existing) != 0:
        raise InvoiceError(f"invoice {existing} for {account} {period} still stands: "
                           f"credit it in full with a credit note before reissuing")
    if not existing and reissue:
        raise InvoiceError(f"no invoice for {account} {period} to reissue")
    inv, detail = build_invoice(conn, account, period, settings, issued_ms=now_ms)
    # Serialised before the write lock is taken: a large call detail must not hold up
    # the charging transactions of live calls.
    detail_json = _detail_json(detail)
    with transaction(conn):
        if find_invoice(conn, account, str(period)) != existing:
            raced = True  # another process issued it meanwhile: that one stands
        else:
            raced = False
            seq, number = _next_number(conn, "invoice", inv.provider.code)
            inv = dataclasses.replace(inv, number=number)
            sha = _store(conn, inv, detail_json, seq)
    if raced:
        latest = find_invoice(conn, account, str(period))
        assert latest is not None
        return load_invoice(conn, latest)
    return Issued(inv, detail, sha, new=True)


def draft_invoice(conn: Db, account: str, period: Period,
                  settings: InvoiceSettings, *, now_ms: int) -> Issued:
    """The invoice as it would be issued now, without a number and without storing it."""
    inv, detail = build_invoice(conn, account, period, settings, issued_ms=now_ms,
                                number="DRAFT", draft=True)
    return Issued(inv, detail, content_sha256(to_json(inv), _detail_json(detail)))


def load_invoice(conn: Db, number: str) -> Issued:
    """An issued invoice or credit note, checked against its stored hash."""
    row = conn.execute("SELECT data, detail, sha256 FROM invoices WHERE number = ?",
                       (number,)).fetchone()
    if row is None:
        raise InvoiceNotFound(f"invoice '{number}' not found")
    data, blob, sha = str(row[0]), row[1], str(row[2])
    detail_json = zlib.decompress(blob) if blob else b"[]"
    if content_sha256(data, detail_json) != sha:
        raise InvoiceError(f"invoice {number} does not match its SHA-256: the stored "
                           f"document was altered")
    detail = [CallRow(*r) for r in json.loads(detail_json)]
    return Issued(from_json(data), detail, sha)


def list_invoices(conn: Db, account: str | None = None
                  ) -> list[dict[str, object]]:
    """Issued documents, newest first (without their data)."""
    cols = ("number", "kind", "account", "period", "issued_ms", "refers_to", "currency", "net",
            "tax", "total", "calls", "sha256")
    q = f"SELECT {', '.join(cols)} FROM invoices"
    rows = conn.execute(q + " WHERE account = ? ORDER BY issued_ms DESC, number DESC",
                        (account,)) if account else \
        conn.execute(q + " ORDER BY issued_ms DESC, number DESC")
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        d["issued"] = datetime.fromtimestamp(int(str(d["issued_ms"])) / 1000, UTC).isoformat()
        out.append(d)
    return out


def _credit_notes(conn: Db, number: str) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(n), Decimal(t)) for n, t in conn.execute(
        "SELECT net, tax FROM invoices WHERE kind = 'credit_note' AND refers_to = ?", (number,))]


def open_amount(conn: Db, number: str) -> Decimal:
    """What of an invoice's net its credit notes have not yet credited."""
    row = conn.execute("SELECT net FROM invoices WHERE number = ?", (number,)).fetchone()
    if row is None:
        raise InvoiceNotFound(f"invoice '{number}' not found")
    return Decimal(row[0]) + sum((n for n, _t in _credit_notes(conn, number)), ZERO)


def issue_credit_note(
    conn: Db,
    number: str,
    reason: str,
    *,
    now_ms: int,
    amount: Decimal | None = None,
) -> Issued:
    """Correct invoice ``number`` with a credit note of ``amount`` (net, before tax;
    default: everything not yet credited).

    The credit note's tax is the amount x the invoice's tax rate, rounded half-up to
    the minor unit, except for the note that credits what is left in full: it takes the
    rest of the invoice's tax, so an invoice and its credit notes add up to exactly zero."""
    if not reason.strip():
        raise InvoiceError("a credit note needs a reason")
    orig = load_invoice(conn, number).invoice
    if orig.kind != "invoice":
        raise InvoiceError(f"{number} is a credit note: only invoices can be credited")
    if now_ms < orig.issued_ms:
        raise InvoiceError(f"a credit note cannot be dated before invoice {number} "
                           f"({datetime.fromtimestamp(orig.issued_ms / 1000, UTC):%Y-%m-%d})")
    with transaction(conn):
        prior = _credit_notes(conn, number)
        left_net = orig.net + sum((n for n, _t in prior), ZERO)
        left_tax = orig.tax + sum((t for _n, t in prior), ZERO)
        if left_net <= 0:
            raise InvoiceError(f"invoice {number} has nothing left to credit "
                               f"(net {orig.net}, credited {orig.net - left_net})")
        amt = left_net if amount is None else amount
        if amt != present(amt, orig.currency):
            raise InvoiceError(f"credit amount {amount} has more decimals than "
                               f"{orig.currency} allows")
        if amt <= 0 or amt > left_net:
            raise InvoiceError(f"credit amount must be above 0 and at most {left_net} "
                               f"{orig.currency} (what is left of {number})")
        tax = left_tax if amt == left_net else present(amt * orig.tax_rate, orig.currency)
        line = Line("credit", f"Correction of invoice {orig.number}", exact=-amt, amount=-amt)
        seq, cn_number = _next_number(conn, "credit_note", orig.provider.code)
        note = dataclasses.replace(
            orig, kind="credit_note", number=cn_number, issued_ms=now_ms, due_ms=now_ms,
            lines=(line,), credits=(), movements=(), statement=Statement(), days=(),
            charges=-amt, credits_total=ZERO, net=-amt, tax=-tax, total=-(amt + tax),
            exact_charged=ZERO, attempts=0, answered=0, no_media=0, calls=0,
            detail_in_document=True, refers_to=orig.number, reason=reason.strip(),
            draft=False)
        detail_json = _detail_json([])
        sha = _store(conn, note, detail_json, seq)
    return Issued(note, [], sha, new=True)
