"""Alerts and auto-recharge: the edges behind the core's ``Alert`` and ``Recharge``.

An alert is logged and, if configured, POSTed as JSON to a webhook. A recharge runs the
configured payment command (argv list, never a shell; ``{account}``, ``{amount}`` and
``{currency}`` are substituted as whole arguments) or POSTs to the recharge webhook; on
success the top-up is written to the ledger with the payment reference the command
printed (its first output line) or the webhook returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..charging import Alert, Recharge

log = logging.getLogger("sidecar.notify")


def post_json(url: str, payload: dict[str, object], timeout: float = 5.0) -> tuple[int, str]:
    """POST a JSON document; return (status, body). Raises OSError on network failure."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(65536).decode("utf-8", "replace")


@dataclass
class RechargeResult:
    ok: bool
    reference: str
    error: str = ""


class Notifier:
    """Carries out alerts and recharges off the event loop (in worker threads)."""

    def __init__(self, alert_webhook: str = "", recharge_command: Sequence[str] = (),
                 recharge_webhook: str = "", timeout: float = 10.0) -> None:
        self.alert_webhook = alert_webhook
        self.recharge_command = tuple(recharge_command)
        self.recharge_webhook = recharge_webhook
        self.timeout = timeout

    async def alert(self, a: Alert) -> None:
        log.warning("alert %s account=%s: %s", a.kind, a.account, a.message,
                    extra={"account": a.account, "decision": "alert",
                           "reason": f"{a.kind}: {a.message}"})
        if not self.alert_webhook:
            return
        payload: dict[str, object] = {"kind": a.kind, "account": a.account,
                                      "message": a.message, "at_ms": a.at_ms, **a.data}
        try:
            status, _ = await asyncio.to_thread(post_json, self.alert_webhook, payload,
                                                self.timeout)
            if status >= 300:
                log.error("alert webhook answered %s for %s", status, a.kind)
        except OSError as exc:
            log.error("alert webhook failed: %s", exc)

    async def recharge(self, r: Recharge, currency: str) -> RechargeResult:
        """Run the payment; the caller records the top-up when ``ok``."""
        if self.recharge_command:
            argv = [arg.replace("{account}", r.account).replace("{amount}", str(r.amount))
                    .replace("{currency}", currency) for arg in self.recharge_command]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                async with asyncio.timeout(self.timeout):
                    out, err = await proc.communicate()
            except (OSError, TimeoutError) as exc:
                return RechargeResult(False, "", f"payment command failed: {exc}")
            if proc.returncode != 0:
                return RechargeResult(False, "", f"payment command exited {proc.returncode}: "
                                      f"{err.decode(errors='replace').strip()[:200]}")
            ref = out.decode(errors="replace").strip().splitlines()
            return RechargeResult(True, ref[0][:200] if ref else "payment command")
        if self.recharge_webhook:
            try:
                status, body = await asyncio.to_thread(
                    post_json, self.recharge_webhook,
                    {"account": r.account, "amount": str(r.amount), "currency": currency},
                    self.timeout)
            except OSError as exc:
                return RechargeResult(False, "", f"recharge webhook failed: {exc}")
            if 200 <= status < 300:
                return RechargeResult(True, body.strip()[:200] or "recharge webhook")
            return RechargeResult(False, "", f"recharge webhook answered {status}")
        return RechargeResult(False, "", "no payment command or webhook configured")


async def run_recharge(notifier: Notifier, r: Recharge, currency: str,
                       topup: Callable[[str, Decimal, str], None],
                       done: Callable[[str], None]) -> RechargeResult:
    """Pay, record the top-up on success, and release the account's pending flag."""
    try:
        res = await notifier.recharge(r, currency)
        if res.ok:
            topup(r.account, r.amount, f"auto-recharge {res.reference}")
            log.info("auto-recharge account=%s amount=%s ref=%s", r.account, r.amount,
                     res.reference)
        else:
            log.error("auto-recharge account=%s failed: %s", r.account, res.error)
        return res
    finally:
        done(r.account)
