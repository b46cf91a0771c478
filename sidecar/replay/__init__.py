"""Pcap replay: a capture's SIP turned into Kamailio's events, so a replay drives the core.

:class:`~sidecar.replay.signalling.SipTracker` is sans-IO: it takes captured payloads
(:class:`~sidecar.media.pcap.CapturedPayload`) and returns the typed events of
:mod:`sidecar.kamailio.events`, timed by the capture's clock.
"""

from .signalling import SipStats, SipTracker

__all__ = ["SipStats", "SipTracker"]
