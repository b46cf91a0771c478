"""The lab's Kamailio factory (``make_lab``) for every test of this directory."""

from tests.lab.test_kamailio_lab import make_lab

__all__ = ["make_lab"]
