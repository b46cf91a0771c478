"""Exact money: parsing, the rounding policy, currencies.

Rounding policy (the only one in the project):

* Every amount is a ``decimal.Decimal`` parsed from text; floats never touch money.
* Arithmetic runs at 28 significant digits (Python's default context), so a price is
  computed exactly before it is rounded.
* A call's charge components (usage, connection fee, surcharge, minimum) are each rounded
  **once**, half-up, to :data:`MONEY_PLACES` (8) decimal places: the *money scale*. CDRs,
  reservations and the ledger store amounts at that scale, so a balance is an exact sum.
  8 places keep the error of a million rounded calls under half a cent.
* Amounts shown to a customer (invoice lines, totals, taxes) are rounded half-up to the
  currency's minor unit (2 places for USD/EUR, 0 for JPY) only where they are presented.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MONEY_PLACES = 8
_MONEY_Q = Decimal(1).scaleb(-MONEY_PLACES)
ZERO = Decimal(0)

# ISO 4217 active codes with their minor units (digits after the decimal point).
_THREE = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_ZERO_DIGITS = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
    "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
}
_TWO = set(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT
    LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN
    NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP
    SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES
    WST XCD YER ZAR ZMW ZWL""".split()
)
CURRENCY_MINOR_UNITS: dict[str, int] = (
    {c: 2 for c in _TWO} | {c: 0 for c in _ZERO_DIGITS} | {c: 3 for c in _THREE}
)


class MoneyError(ValueError):
    """An amount or currency that cannot be used."""


def parse_amount(text: str, *, allow_negative: bool = False) -> Decimal:
    """Parse a plain decimal amount such as ``"0.0095"``; refuse anything else.

    Exponents, NaN, infinities, thousands separators and decimal commas are refused
    because in a rate deck they are almost always a spreadsheet accident.
    """
    s = text.strip()
    if not s:
        raise MoneyError("empty amount")
    body = s[1:] if s[0] in "+-" else s
    if not body or not all(ch.isdigit() or ch == "." for ch in body) or body.count(".") > 1:
        raise MoneyError(f"'{text}' is not a decimal number like 0.0095")
    if body == ".":
        raise MoneyError(f"'{text}' is not a decimal number like 0.0095")
    try:
        value = Decimal(s)
    except InvalidOperation as exc:  # pragma: no cover - guarded above
        raise MoneyError(f"'{text}' is not a decimal number") from exc
    if value < 0 and not allow_negative:
        raise MoneyError(f"'{text}' is negative")
    return value


def round_money(value: Decimal) -> Decimal:
    """Round to the money scale (8 places, half-up): the one rounding of a call's charge."""
    return value.quantize(_MONEY_Q, rounding=ROUND_HALF_UP)


def check_currency(code: str) -> str:
    """Return the ISO 4217 code upper-cased, or raise :class:`MoneyError`."""
    c = code.strip().upper()
    if c not in CURRENCY_MINOR_UNITS:
        raise MoneyError(f"unknown currency '{code}' (expected an ISO 4217 code such as USD)")
    return c


def round_currency(value: Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit: for amounts shown to a customer."""
    places = CURRENCY_MINOR_UNITS[check_currency(currency)]
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def to_text(value: Decimal) -> str:
    """How an amount is stored: plain digits, never an exponent (``0E-8`` becomes
    ``0.00000000``), keeping its scale."""
    text = str(value)  # the same digits whenever it has no exponent, and twice as fast
    return text if "E" not in text else format(value, "f")


def fmt(value: Decimal) -> str:
    """Render an amount as plain text without exponent and without trailing zeros."""
    if value == 0:
        return "0"
    s = format(value, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s
