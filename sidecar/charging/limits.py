"""Usage and fraud limits of an account (pure): what they are, how they are written, and
how an account inherits them from its parent accounts and its plan.

A limit set names only what it sets. Each key is resolved on its own: the account's own
value, else its parent's (and so on up the tree), else the plan's default. A key set to
``None`` (JSON ``null``, ``none`` on the command line) is an explicit "no limit" that
stops the inheritance; a key absent inherits.

Two kinds of keys:

- checked at the INVITE, from what the sidecar holds in memory (no store round trip):
  ``concurrent_calls``, ``calls_per_second``, ``calls_per_minute``, ``max_rate`` (price
  per minute), ``max_connection_fee``, ``allow`` / ``deny`` (destination prefixes),
  ``high_cost_rate`` (destinations rated at or above it are denied unless allowed),
  ``same_number_per_hour``, ``max_call_cost`` (the call is cut when it has cost that);
- detection rules over sliding windows, each with its ``*_action`` (``alert``, ``block``
  new calls, or ``suspend`` the account and end its live calls at once): see
  :data:`RULES`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

ACTIONS = ("alert", "block", "suspend")


class LimitsError(ValueError):
    """A limit set that cannot be used: names the key and what is wrong."""


# key -> (kind, what it means); kind: int (>= 1), money (>= 0), prefixes, action
_KEYS: dict[str, tuple[str, str]] = {
    "concurrent_calls": ("int", "calls up at once (offered, not yet ended)"),
    "calls_per_second": ("int", "new calls in any second"),
    "calls_per_minute": ("int", "new calls in any 60 seconds"),
    "max_rate": ("money", "highest price per minute the account may call"),
    "max_connection_fee": ("money", "highest connection fee the account may call"),
    "allow": ("prefixes", "destination prefixes always allowed (over deny and high cost)"),
    "deny": ("prefixes", "destination prefixes refused"),
    "high_cost_rate": ("money", "a destination at this price per minute or more is high "
                                "cost: refused unless allowed"),
    "same_number_per_hour": ("int", "calls to one number in any hour"),
    "max_call_cost": ("money", "the most one call may cost: it is cut when it reaches it"),
    # detection rules
    "spend_per_minute": ("money", "money reserved and charged in any 60 seconds"),
    "spend_per_minute_action": ("action", ""),
    "spend_per_hour": ("money", "money reserved and charged in any hour"),
    "spend_per_hour_action": ("action", ""),
    "new_country_days": ("int", "a country not called for this many days is new"),
    "new_country_rate": ("money", "a call to a new country priced above this per minute "
                                  "trips the rule"),
    "new_country_action": ("action", ""),
    "distinct_callees": ("int", "more distinct numbers than this in the window"),
    "distinct_countries": ("int", "more distinct countries than this in the window"),
    "distinct_minutes": ("int", "the window of the distinct rules (default 10)"),
    "distinct_action": ("action", ""),
    "short_calls": ("int", "more answered calls shorter than short_call_seconds than this "
                           "in short_calls_minutes"),
    "short_call_seconds": ("int", "a short call lasts less than this (default 6)"),
    "short_calls_minutes": ("int", "the window of the short-call rule (default 10)"),
    "short_calls_action": ("action", ""),
    "high_cost_calls": ("int", "more high-cost calls than this up at once"),
    "high_cost_calls_action": ("action", ""),
}
KEYS = tuple(_KEYS)

#: Detection rules: name -> (the key that turns it on, its action key).
RULES: dict[str, tuple[str, str]] = {
    "spend_per_minute": ("spend_per_minute", "spend_per_minute_action"),
    "spend_per_hour": ("spend_per_hour", "spend_per_hour_action"),
    "new_country": ("new_country_rate", "new_country_action"),
    "distinct_callees": ("distinct_callees", "distinct_action"),
    "distinct_countries": ("distinct_countries", "distinct_action"),
    "short_calls": ("short_calls", "short_calls_action"),
    "high_cost_calls": ("high_cost_calls", "high_cost_calls_action"),
}


def describe(key: str) -> str:
    """What ``key`` means (for help texts and the API document)."""
    _kind, text = _KEYS[key]
    return text or "alert, block or suspend"


@dataclass(frozen=True)
class Limits:
    """A limit set: every key ``None`` unless set; ``explicit`` names the keys set at
    this level (a key set to ``None`` there means "no limit", not "inherit")."""

    concurrent_calls: int | None = None
    calls_per_second: int | None = None
    calls_per_minute: int | None = None
    max_rate: Decimal | None = None
    max_connection_fee: Decimal | None = None
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None
    high_cost_rate: Decimal | None = None
    same_number_per_hour: int | None = None
    max_call_cost: Decimal | None = None
    spend_per_minute: Decimal | None = None
    spend_per_minute_action: str | None = None
    spend_per_hour: Decimal | None = None
    spend_per_hour_action: str | None = None
    new_country_days: int | None = None
    new_country_rate: Decimal | None = None
    new_country_action: str | None = None
    distinct_callees: int | None = None
    distinct_countries: int | None = None
    distinct_minutes: int | None = None
    distinct_action: str | None = None
    short_calls: int | None = None
    short_call_seconds: int | None = None
    short_calls_minutes: int | None = None
    short_calls_action: str | None = None
    high_cost_calls: int | None = None
    high_cost_calls_action: str | None = None
    explicit: frozenset[str] = field(default=frozenset(), compare=True)

    # --- reading and writing -----------------------------------------------------------
    @classmethod
    def parse(cls, values: Mapping[str, object], where: str = "limits") -> Limits:
        """A limit set from JSON-like values (money as strings or numbers, prefixes as a
        list or a comma-separated string, ``None`` = no limit). Raises
        :class:`LimitsError` naming ``where.key`` and what is wrong."""
        out: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in _KEYS:
                raise LimitsError(f"{where}.{key}: unknown limit (known: {', '.join(KEYS)})")
            out[key] = None if raw is None else _value(key, raw, f"{where}.{key}")
        return cls(**out, explicit=frozenset(out))

    @classmethod
    def from_json(cls, text: str | None, where: str = "limits") -> Limits:
        """A stored limit set (``accounts.limits``, ``plans.limits``); empty = none set."""
        if not text:
            return NO_LIMITS
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise LimitsError(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise LimitsError(f"{where}: expected a JSON object")
        return cls.parse(doc, where)

    def to_dict(self) -> dict[str, object]:
        """The keys set at this level, as JSON (money as strings, prefixes as lists)."""
        out: dict[str, object] = {}
        for key in KEYS:
            if key in self.explicit:
                out[key] = _jsonable(getattr(self, key))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def updated(self, changes: Mapping[str, object], unset: Iterable[str] = (),
                where: str = "limits") -> Limits:
        """This set with ``changes`` applied (parsed as :meth:`parse` does) and the
        ``unset`` keys removed (inherited again)."""
        gone = set(unset)
        for key in gone:
            if key not in _KEYS:
                raise LimitsError(f"{where}.{key}: unknown limit (known: {', '.join(KEYS)})")
        merged = {k: v for k, v in self.to_dict().items() if k not in gone}
        merged.update(changes)
        return Limits.parse(merged, where)

    # --- inheritance -----------------------------------------------------------------
    def over(self, parent: Limits) -> Limits:
        """This set with what it does not set taken from ``parent``."""
        if not parent.explicit:
            return self
        if not self.explicit:
            return parent
        values = {k: getattr(self if k in self.explicit else parent, k) for k in KEYS}
        return Limits(**values, explicit=self.explicit | parent.explicit)

    @property
    def checks_offers(self) -> bool:
        """Whether any limit applies at the INVITE (the fast path skips them all)."""
        return any(getattr(self, k) is not None for k in _OFFER_KEYS)

    def action(self, rule: str) -> str:
        """The action of a detection rule (``alert`` unless set)."""
        return getattr(self, RULES[rule][1]) or "alert"

    # --- what the INVITE needs, worked out once per limit set ---------------------------
    @cached_property
    def allow_prefixes(self) -> Prefixes:
        return Prefixes(self.allow or ())

    @cached_property
    def deny_prefixes(self) -> Prefixes:
        return Prefixes(self.deny or ())

    @cached_property
    def rules_on_new_calls(self) -> bool:
        """Whether a rule looks at each new call (a new country, distinct callees or
        countries, simultaneous high-cost calls)."""
        return (self.new_country_rate is not None or self.distinct_callees is not None
                or self.distinct_countries is not None or self.high_cost_calls is not None)


_OFFER_KEYS = ("concurrent_calls", "calls_per_second", "calls_per_minute", "max_rate",
               "max_connection_fee", "allow", "deny", "high_cost_rate",
               "same_number_per_hour", "max_call_cost")

NO_LIMITS = Limits()
assert {f.name for f in fields(Limits)} == set(KEYS) | {"explicit"}


def effective(chain: Iterable[Limits]) -> tuple[Limits, dict[str, int]]:
    """Resolve a chain (the account's own set first, then its parents', the plan's
    last): the effective set, and for each key set somewhere the index in the chain it
    came from."""
    result = NO_LIMITS
    source: dict[str, int] = {}
    items = list(chain)
    for i in range(len(items) - 1, -1, -1):
        lim = items[i]
        for k in lim.explicit:
            source[k] = i
        result = lim.over(result)
    return result, source


def parse_assignments(pairs: Iterable[str], where: str = "limits") -> dict[str, object]:
    """``KEY=VALUE`` words (the command line) as values for :meth:`Limits.parse`:
    ``none`` means no limit; ``allow``/``deny`` take comma-separated prefixes."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LimitsError(f"{where}: expected KEY=VALUE, got '{pair}'")
        if key not in _KEYS:
            raise LimitsError(f"{where}.{key}: unknown limit (known: {', '.join(KEYS)})")
        value = value.strip()
        out[key] = None if value.lower() in ("none", "null", "unlimited") else value
    return out


def _value(key: str, raw: object, where: str) -> object:
    kind = _KEYS[key][0]
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise LimitsError(f"{where}: expected a whole number >= 1, got {raw!r}")
        try:
            n = int(str(raw).strip())
        except ValueError:
            raise LimitsError(f"{where}: expected a whole number >= 1, got {raw!r}") from None
        if not 1 <= n <= 1_000_000_000:
            raise LimitsError(f"{where}: expected a whole number >= 1, got {raw!r}")
        return n
    if kind == "money":
        if isinstance(raw, bool) or not isinstance(raw, int | str | float | Decimal):
            raise LimitsError(f"{where}: expected an amount >= 0, got {raw!r}")
        try:
            d = Decimal(str(raw).strip())
        except InvalidOperation:
            raise LimitsError(f"{where}: expected an amount >= 0, got {raw!r}") from None
        if not d.is_finite() or d < 0 or d > Decimal("1e12"):
            raise LimitsError(f"{where}: expected an amount >= 0, got {raw!r}")
        return d
    if kind == "prefixes":
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise LimitsError(f"{where}: expected a list of digit prefixes, got {raw!r}")
        out: list[str] = []
        for item in items:
            p = str(item).strip().lstrip("+")
            if not p:
                continue
            if not p.isdigit() or not p.isascii() or len(p) > 15:
                raise LimitsError(f"{where}: '{item}' is not a digit prefix")
            out.append(p)
        return tuple(sorted(set(out)))
    # action
    if not isinstance(raw, str) or raw.strip().lower() not in ACTIONS:
        raise LimitsError(f"{where}: expected one of {', '.join(ACTIONS)}, got {raw!r}")
    return raw.strip().lower()


def _jsonable(v: object) -> object:
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, tuple):
        return list(v)
    return v


class Prefixes:
    """A set of digit prefixes, matched longest first."""

    __slots__ = ("lengths", "members")

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.members = frozenset(prefixes)
        self.lengths = tuple(sorted({len(p) for p in self.members}, reverse=True))

    def match(self, number: str) -> str | None:
        """The longest prefix that ``number`` starts with, or None."""
        members = self.members
        size = len(number)
        for n in self.lengths:
            if n <= size:
                head = number[:n]
                if head in members:
                    return head
        return None
