"""Invoices, credit notes, reconciliation, call records and cost analytics.

Build an invoice model from SQLite with exact Decimal math (:mod:`.build`), issue it
with a sequential number and freeze it (:mod:`.issue`), render it through Jinja2 to HTML
and WeasyPrint to PDF (:mod:`.render`), and prove it against the CDRs and the ledger
(:mod:`.reconcile`). The rounding rule is documented in :mod:`.model`.
"""

from .build import InvoiceError, InvoiceNotFound, InvoiceSettings, build_invoice
from .issue import (
    Issued,
    draft_invoice,
    find_invoice,
    issue_credit_note,
    issue_invoice,
    list_invoices,
    load_invoice,
    open_amount,
)
from .model import Invoice, Line, Period, PeriodError
from .reconcile import Reconciliation, reconcile, reconciliation_json
from .render import Rendered, Renderer, write_rendered

__all__ = [
    "Invoice", "InvoiceError", "InvoiceNotFound", "InvoiceSettings", "Issued", "Line", "Period",
    "PeriodError",
    "Reconciliation", "Rendered", "Renderer", "build_invoice", "draft_invoice", "find_invoice",
    "issue_credit_note", "issue_invoice", "list_invoices", "load_invoice", "open_amount",
    "reconcile", "reconciliation_json", "write_rendered",
]
