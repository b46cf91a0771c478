"""The HTTP API (aiohttp): CDRs, decks, balances, live calls, invoices, limits and fraud
events; OpenAPI described."""

from .app import ROUTES, WRITE_ROUTES, make_app
from .openapi import openapi_document

__all__ = ["ROUTES", "WRITE_ROUTES", "make_app", "openapi_document"]
