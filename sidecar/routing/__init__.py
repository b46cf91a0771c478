"""Least-cost routing (pure core, no I/O): carriers, the route list of a call with margin
protection (:mod:`.select`), route health (:mod:`.health`), SIP destinations (:mod:`.sip`)."""

from .carriers import Carrier, CarrierError, Load, check_carrier_name, check_uri
from .health import EventKind, HealthEvent, HealthPolicy, RouteHealth, WindowStats
from .select import (
    CarrierBook,
    CarrierDeck,
    Excluded,
    Margin,
    Order,
    Quality,
    QualityWeights,
    Route,
    RouteList,
    RoutingError,
    RoutingPolicy,
    Why,
    quality_score,
    select_routes,
)
from .sip import SipUri, SipUriError, parse_sip_uri

__all__ = [
    "Carrier", "CarrierBook", "CarrierDeck", "CarrierError", "EventKind", "Excluded", "HealthEvent",
    "HealthPolicy", "Load", "Margin", "Order", "Quality", "QualityWeights", "Route",
    "RouteHealth", "RouteList", "RoutingError", "RoutingPolicy", "SipUri", "SipUriError",
    "Why", "WindowStats", "check_carrier_name", "check_uri", "parse_sip_uri",
    "quality_score", "select_routes",
]
