"""A carrier's SIP destination is checked when it is added: what Kamailio can be handed,
and a clear error for anything else."""

from __future__ import annotations

import pytest

from sidecar.routing import CarrierError, SipUriError, check_carrier_name, check_uri, parse_sip_uri


@pytest.mark.parametrize(("given", "stored"), [
    ("sip:gw1.carrier.example", "sip:gw1.carrier.example"),
    (" SIP:gw1.carrier.example:5060 ", "sip:gw1.carrier.example:5060"),
    ("sips:198.51.100.7:5061", "sips:198.51.100.7:5061"),
    ("sip:+4930@[2001:db8::1]:5080;transport=tcp", "sip:+4930@[2001:db8::1]:5080;transport=tcp"),
    ("sip:trunk@gw.example;lr", "sip:trunk@gw.example;lr"),
])
def test_good_destinations(given: str, stored: str) -> None:
    assert check_uri(given) == stored


def test_the_parts_are_read() -> None:
    u = parse_sip_uri("sips:pfx@[2001:db8::1]:5061;transport=tls")
    assert (u.scheme, u.user, u.host, u.port, u.params) == (
        "sips", "pfx", "[2001:db8::1]", 5061, (("transport", "tls"),))


@pytest.mark.parametrize(("given", "error"), [
    ("", "empty SIP destination"),
    ("http://gw.example", "starts with sip: or sips:"),
    ("gw.example:5060", "starts with sip: or sips:"),
    ("sip:", "no host"),
    ("sip:gw example", "spaces are not allowed"),
    ("sip:gw.example:0", "port '0' is not a number from 1 to 65535"),
    ("sip:gw.example:70000", "port '70000'"),
    ("sip:gw.example:50a", "port '50a'"),
    ("sip:256.1.1.1", "'256.1.1.1' is not an IPv4 address"),
    ("sip:[2001:db8::zz]", "is not an IPv6 address"),
    ("sip:[2001:db8::1", "unclosed '['"),
    ("sip:-gw.example", "is not a host name"),
    ("sip:gw_1.example", "is not a host name"),
    ("sip:gw.example;transport=carrier-pigeon", "transport 'carrier-pigeon' is not one of"),
    ("sip:gw.example;=x", "is not a valid URI parameter"),
    ("sip:gw.example?Subject=x", "headers (?...) are not allowed"),
    ("sip:@gw.example", "is not a valid user part"),
])
def test_bad_destinations_say_what_is_wrong(given: str, error: str) -> None:
    with pytest.raises(SipUriError, match=None) as exc:
        parse_sip_uri(given)
    assert error in str(exc.value)
    with pytest.raises(CarrierError, match="SIP destination"):
        check_uri(given)


@pytest.mark.parametrize("name", ["", "-x", "a b", "a:b", "x" * 65, "ü"])
def test_bad_carrier_names(name: str) -> None:
    with pytest.raises(CarrierError, match="is not a carrier name"):
        check_carrier_name(name)


def test_good_carrier_names() -> None:
    for name in ("a", "Tier1-Telecom", "bt.wholesale_2", "x" * 64):
        assert check_carrier_name(name) == name
