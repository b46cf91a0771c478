"""Rating: decks, increments and prices (pure core, no I/O)."""

from .deck import DeckError, DeckProblem, ParsedDeck, RateLine, parse_deck, parse_deck_text
from .engine import NoRate, Price, RateTable, Rating, affordable_seconds, price
from .increments import Increment, IncrementError, SecondRounding, duration_seconds

__all__ = [
    "DeckError", "DeckProblem", "Increment", "IncrementError", "NoRate", "ParsedDeck",
    "Price", "RateLine", "RateTable", "Rating", "SecondRounding", "affordable_seconds",
    "duration_seconds", "parse_deck", "parse_deck_text", "price",
]
