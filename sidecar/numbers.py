"""Telephone numbers: normalisation to E.164 digits, country codes, origin classes."""

from __future__ import annotations

from dataclasses import dataclass, field

# ITU-T E.164 country calling codes in service. They form a prefix-free set, so at most
# one of a number's first 1, 2 or 3 digits is a country code.
_CC_TEXT = """
1 7
20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58
60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98
211 212 213 216 218 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235
236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255 256
257 258 260 261 262 263 264 265 266 267 268 269 290 291 297 298 299
350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 378 379 380
381 382 383 385 386 387 389 420 421 423
500 501 502 503 504 505 506 507 508 509 590 591 592 593 594 595 596 597 598 599
670 672 673 674 675 676 677 678 679 680 681 682 683 685 686 687 688 689 690 691 692
800 808 850 852 853 855 856 870 878 880 881 882 883 886 888
960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 979 992 993 994
995 996 998
"""
COUNTRY_CODES: frozenset[str] = frozenset(_CC_TEXT.split())

# European Economic Area: the 27 EU member states plus Iceland, Liechtenstein, Norway.
EEA_COUNTRY_CODES: frozenset[str] = frozenset(
    """43 32 359 385 357 420 45 372 358 33 49 30 36 353 39 371 370 352 356 31 48 351 40 421
    386 34 46 354 423 47""".split()
)

ORIGIN_EEA = "EEA"
ORIGIN_NON_EEA = "NON-EEA"
ORIGIN_CLASSES = (ORIGIN_EEA, ORIGIN_NON_EEA)

_SEPARATORS = str.maketrans("", "", " -.()/\t")


class InvalidNumber(ValueError):
    """A dialled number that cannot be turned into E.164 digits."""


@dataclass(frozen=True)
class NumberPlan:
    """How dialled numbers are normalised before rating.

    ``international_prefix`` (``00``) and a leading ``+`` introduce a country code.
    ``national_prefix`` (a trunk prefix such as ``0``) with ``country_code`` turns a
    national number into E.164. ``strip_prefixes`` are technical or routing prefixes a
    customer puts in front of the number (removed first, longest first).
    """

    international_prefix: str = "00"
    national_prefix: str = ""
    country_code: str = ""
    strip_prefixes: tuple[str, ...] = field(default_factory=tuple)


DEFAULT_NUMBER_PLAN = NumberPlan()


def user_part(uri_or_number: str) -> str:
    """The user part of a ``sip:``/``sips:``/``tel:`` URI, or the text itself."""
    s = uri_or_number.strip()
    low = s[:5].lower()
    if low.startswith("sip:") or low.startswith("tel:"):
        s = s[4:]
    elif low.startswith("sips:"):
        s = s[5:]
    else:
        return s
    for sep in ("@", ";"):
        cut = s.find(sep)
        if cut >= 0:
            s = s[:cut]
    return s


def normalize(number: str, plan: NumberPlan = DEFAULT_NUMBER_PLAN) -> str:
    """Return the E.164 digits (no ``+``) of a dialled number, or raise InvalidNumber."""
    # Digits alone (what Kamailio sends most often) are their own user part, with no
    # separators to remove.
    s = number if number.isdigit() and number.isascii() else \
        user_part(number).translate(_SEPARATORS)
    if plan.strip_prefixes:
        for prefix in sorted(plan.strip_prefixes, key=len, reverse=True):
            if prefix and s.startswith(prefix):
                s = s[len(prefix):]
                break
    if s.startswith("+"):
        s = s[1:]
    elif plan.international_prefix and s.startswith(plan.international_prefix):
        s = s[len(plan.international_prefix):]
    elif plan.national_prefix and plan.country_code and s.startswith(plan.national_prefix):
        s = plan.country_code + s[len(plan.national_prefix):]
    if not s:
        raise InvalidNumber(f"'{number}' has no digits")
    if not s.isdigit() or not s.isascii():
        raise InvalidNumber(f"'{number}' is not a telephone number (digits expected)")
    if len(s) > 15:
        raise InvalidNumber(f"'{number}' has {len(s)} digits; E.164 allows at most 15")
    return s


def country_code(e164: str) -> str | None:
    """The ITU country calling code that starts these E.164 digits, if any."""
    for n in (1, 2, 3):
        cc = e164[:n]
        if cc in COUNTRY_CODES:
            return cc
    return None


def origin_class(cli: str | None, plan: NumberPlan = DEFAULT_NUMBER_PLAN) -> str:
    """Classify a caller's number (CLI) as EEA or NON-EEA for origin-based rating.

    A missing or invalid CLI (absent, under 5 or over 15 digits, no valid country code)
    is NON-EEA, as the published rule says.
    """
    if not cli:
        return ORIGIN_NON_EEA
    try:
        digits = normalize(cli, plan)
    except InvalidNumber:
        return ORIGIN_NON_EEA
    if len(digits) < 5:
        return ORIGIN_NON_EEA
    cc = country_code(digits)
    if cc is not None and cc in EEA_COUNTRY_CODES:
        return ORIGIN_EEA
    return ORIGIN_NON_EEA
