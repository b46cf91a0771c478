"""Online charging: accounts' credit, reservations in chunks, settlement (pure core)."""

from .charger import REASON_CREDIT, CallSession, Charger, ChargingConfig, PlanRates
from .model import (
    Account,
    AccountKind,
    Action,
    Alert,
    AuthDecision,
    Cdr,
    CdrWritten,
    Disposition,
    EndCall,
    MediaOutcome,
    Recharge,
    Settlement,
)

__all__ = [
    "REASON_CREDIT", "Account", "AccountKind", "Action", "Alert", "AuthDecision", "CallSession",
    "Cdr", "CdrWritten", "Charger", "ChargingConfig", "Disposition", "EndCall", "MediaOutcome",
    "PlanRates",
    "Recharge", "Settlement",
]
