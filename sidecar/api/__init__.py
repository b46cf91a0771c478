"""The HTTP API (aiohttp): CDRs, decks, balances, live calls, invoices; OpenAPI described."""

from .app import ROUTES, make_app
from .openapi import openapi_document

__all__ = ["ROUTES", "make_app", "openapi_document"]
