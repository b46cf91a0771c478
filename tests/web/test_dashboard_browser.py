"""The dashboard in Debian's headless Chromium, as an operator sees it: first on a store
with billed calls, an invoice and a fraud event, then with a real call through the real
Kamailio, ``sidecar run`` and SIPp. Screenshots are kept in test-artifacts/.

Every process (``sidecar api``, Kamailio, ``sidecar run``, SIPp, Chromium and its driver)
is stopped by its PID when a test ends, also on failure."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from sidecar.invoices import issue_invoice
from sidecar.lab.live import LiveLab
from sidecar.routing import EventKind, HealthEvent
from sidecar.store.carriers import add_carrier, record_health_event
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.api.test_scoped_dashboard import reseller_store
from tests.e2e.test_live_sidecar import DECK, DIALLED, account, cdrs
from tests.invoices.helpers import AFTER, NUMBERS, PERIOD, SETTINGS, call, failed_call, new_sim

from .browser import (
    chromium,
    live_rows,
    need_browser,
    open_dashboard,
    recent_rows,
    screenshot,
    table_rows,
    wait_until,
)
from .server import TOKEN, api_server

pytestmark = pytest.mark.timeout(60)


def _text(driver: Any, css: str) -> str:
    return str(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
        ".join('\\n')", css))


def _sample_store(db: Path) -> None:
    sim = new_sim(db)
    sim.account("ACME", "1000", name="ACME Telecom GmbH", tax_rate=Decimal("0.19"))
    sim.account("ACME-SALES", "50", parent="ACME")
    sim.account("SMALL", "2", low_balance=Decimal("5"))
    for i, (number, ms) in enumerate([(NUMBERS[2], 61_000), (NUMBERS[1], 45_000),
                                      (NUMBERS[0], 30_000), (NUMBERS[3], 5_000)]):
        call(sim, f"c{i}", number, ms, caller="+4915112345678", route="carrier-a")
    call(sim, "sales-1", NUMBERS[1], 120_000, account="ACME-SALES", route="carrier-b")
    failed_call(sim, "busy", NUMBERS[0], route="carrier-a")
    issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    sim.conn.execute(
        "INSERT INTO fraud_events (ts_ms, account, rule, action, reason, evidence, key) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (sim.now, "ACME-SALES", "max_calls_per_minute",
                                         "block", "<b>31 calls</b> in a minute", "{}", "f1"))
    sim.conn.commit()
    # Least-cost routing: two carriers, one pulled by route health; c0 was routed and
    # lost money on carrier-a (its CDR's buy cost above its price).
    add_carrier(sim.conn, "carrier-a", "sip:10.0.0.1", currency="USD", now_ms=sim.now)
    add_carrier(sim.conn, "carrier-b", "sip:10.0.0.2", currency="USD", now_ms=sim.now)
    record_health_event(sim.conn, HealthEvent("carrier-a", EventKind.PULLED, sim.now, "health",
                                              "FAS score 60 at or above 50",
                                              until_ms=sim.now + 900_000))
    (cost,) = sim.conn.execute("SELECT cost FROM cdrs WHERE call_ref = 'c0'").fetchone()
    sim.conn.execute("UPDATE cdrs SET buy_cost = ?, margin = ? WHERE call_ref = 'c0'",
                     (str(Decimal(cost) + Decimal("0.5")), "-0.50000000"))
    sim.conn.commit()
    sim.charger.authorize("live-1", number=NUMBERS[2], now_ms=sim.now, account_code="ACME")
    sim.answer("live-1")
    sim.conn.close()


def test_the_dashboard_shows_balances_alerts_charts_fas_fraud_and_invoices(
        tmp_path: Path) -> None:
    need_browser()
    _sample_store(tmp_path / "sidecar.db")
    with api_server(tmp_path / "sidecar.db", tmp_path / "api") as base, chromium() as driver:
        # A wrong token: the page says so and shows nothing.
        driver.get(base + "/dashboard")
        driver.find_element(By.ID, "token").send_keys("not-the-token-at-all-xxxxxxxxxxxxx")
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_until(lambda: "refused" in _text(driver, "#login-error"), 10,
                   "a wrong token was not refused")
        assert not driver.find_element(By.ID, "main").is_displayed()

        open_dashboard(driver, base, TOKEN, "?days=3660")
        live = wait_until(lambda: live_rows(driver), 10, "the live call did not show")
        assert list(live) == ["live-1"]
        assert live["live-1"]["account"] == "ACME"
        assert live["live-1"]["destination"] == "UK Mobile"
        assert Decimal(live["live-1"]["running cost"]) > 0
        wait_until(lambda: "ACME-SALES" in _text(driver, "#accounts tbody"), 10,
                   "the balances did not show")
        accounts = table_rows(driver, "accounts")
        assert (accounts["SMALL"]["kind"], accounts["SMALL"]["balance"]) == ("prepaid USD", "2")
        assert Decimal(accounts["ACME"]["held"]) > 0  # the live call's reservation
        alerts = _text(driver, "#alerts")
        assert "SMALL" in alerts and "below 5" in alerts
        assert "ACME-SALES" in alerts and "max_calls_per_minute" in alerts
        # The charts: one bar per destination, per day, per department.
        bars = driver.execute_script(
            "return ['destination', 'day', 'department'].map("
            "k => document.querySelectorAll('#chart-' + k + ' rect.bar').length)")
        assert bars[0] == 4 and bars[1] >= 1 and bars[2] == 2, bars
        assert "ACME / ACME-SALES" in _text(driver, "#chart-department text")
        assert "carrier-a" in _text(driver, "#fas tbody")
        fraud = _text(driver, "#fraud tbody")
        # Untrusted text is shown as text, never as markup.
        assert "<b>31 calls</b> in a minute" in fraud and "open" in fraud
        assert driver.execute_script("return document.querySelectorAll('#fraud b').length") \
            == 0
        assert "INV-" in _text(driver, "#invoices tbody")
        carriers = table_rows(driver, "carriers")
        assert carriers["carrier-a"]["state"] == "pulled: FAS score 60 at or above 50"
        assert (carriers["carrier-a"]["margin"], carriers["carrier-a"]["losing calls"]) == (
            "-0.5", "1")
        assert (carriers["carrier-b"]["state"], carriers["carrier-b"]["routed calls"]) == (
            "enabled", "0")
        recent = recent_rows(driver)
        assert recent["busy"]["result"].startswith("failed")
        shot = screenshot(driver, tmp_path, "dashboard-sample")
        assert shot.stat().st_size > 10_000

        # An invoice's PDF through its download button (fetched with the token).
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        pdf_button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "#invoices button")
                      if b.text == "PDF")
        pdf_button.click()
        pdf = wait_until(lambda: [p for p in downloads.glob("*.pdf")], 30,
                         "the PDF was not downloaded")[0]
        wait_until(lambda: pdf.read_bytes()[:5] == b"%PDF-", 10, "not a PDF")

        # The token stays in this tab only: "forget" locks the page again.
        driver.find_element(By.ID, "forget").click()
        assert driver.find_element(By.ID, "login").is_displayed()
        assert driver.execute_script("return sessionStorage.length") == 0


def test_a_resellers_token_sees_its_customers_calls_only(tmp_path: Path) -> None:
    """RES's token (DIST -> RES -> CUST; OTHER beside RES): the page says whose view it
    is and shows CUST's call up now and its CDR, never OTHER's, nor FAS routes or
    carriers; the operator's page on the same store still shows both calls."""
    need_browser()
    sim, res_token = reseller_store(str(tmp_path / "sidecar.db"))
    sim.conn.close()
    with api_server(tmp_path / "sidecar.db", tmp_path / "api") as base, chromium() as driver:
        open_dashboard(driver, base, res_token, "?days=3660")
        live = wait_until(lambda: live_rows(driver), 10, "the live call did not show")
        assert list(live) == ["cust-live"] and live["cust-live"]["account"] == "CUST"
        assert list(wait_until(lambda: recent_rows(driver), 10, "no CDR showed")) == [
            "cust-ended"]
        wait_until(lambda: driver.find_element(By.ID, "view").is_displayed(), 10,
                   "the page did not say whose view it is")
        assert _text(driver, "#view") == "Reseller view: RES and 1 account below it"
        wait_until(lambda: "CUST" in _text(driver, "#accounts tbody"), 10,
                   "the balances did not show")
        assert sorted(table_rows(driver, "accounts")) == ["CUST (RES)", "RES"]
        assert "OTHER" not in _text(driver, "#fraud tbody") + _text(driver, "#invoices tbody")
        assert "CUST" in _text(driver, "#invoices tbody")
        for section in ("fas", "carriers"):  # the operator's: hidden, and empty
            assert not driver.find_element(By.ID, section).is_displayed()
        time.sleep(1.2)  # a few more ticks: still CUST's call only
        assert list(live_rows(driver)) == ["cust-live"]
        assert "OTHER" not in _text(driver, "main")
        screenshot(driver, tmp_path, "dashboard-reseller")

        driver.find_element(By.ID, "forget").click()
        open_dashboard(driver, base, TOKEN, "?days=3660")
        wait_until(lambda: sorted(live_rows(driver)) == ["cust-live", "other-live"], 10,
                   "the operator's page did not show both calls")
        wait_until(lambda: driver.find_element(By.ID, "fas").is_displayed(), 10,
                   "the operator's FAS routes did not show")
        assert not driver.find_element(By.ID, "view").is_displayed()


def test_a_real_call_shows_with_its_running_cost_and_goes_with_its_cdr(
        tmp_path: Path) -> None:
    """Kamailio + ``sidecar run`` + SIPp: the call appears on the page while it is up,
    its running cost grows, and when it ends it leaves the live table and its CDR shows
    under "just ended" with what the store charged."""
    need_browser()
    conn = connect(tmp_path / "sidecar.db")
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    account(conn, "ACME", "10")
    try:
        with LiveLab(tmp_path / "lab", tmp_path / "sidecar.db") as lab, \
                api_server(tmp_path / "sidecar.db", tmp_path / "api") as base, \
                chromium() as driver:
            open_dashboard(driver, base, TOKEN)
            wait_until(lambda: driver.execute_script("return document.body.dataset.ticks"),
                       10, "no live tick reached the page")
            uas = lab.uas("uas.xml")
            uac = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=8000)
            first = wait_until(lambda: live_rows(driver), 15, "the call did not show")
            (ref,) = first
            row = first[ref]
            assert row["account"] == "ACME" and row["destination"] == "Germany Fixed"
            assert row["node"] == lab.node
            cost0 = Decimal(row["running cost"])
            time.sleep(2.2)
            later = live_rows(driver)[ref]
            assert Decimal(later["running cost"]) > cost0, (row, later)
            assert Decimal(later["running cost"]) >= Decimal("0.002")  # 0.001/s, >= 2 s
            assert later["paid time left"] != "0:00"
            screenshot(driver, tmp_path, "dashboard-call-up")
            r = uac.wait()
            uas.wait()
            assert r.calls_ok, r.output_tail() + lab.log_tail()
            wait_until(lambda: ref not in live_rows(driver), 10,
                       "the call stayed on the page after it ended")
            ended = wait_until(lambda: recent_rows(driver).get(ref), 10,
                               "its CDR did not show under 'just ended'")
            (cdr,) = cdrs(conn, "ACME")
            assert cdr["call_ref"] == ref and cdr["disposition"] == "answered"
            assert ended["result"] == "answered"
            assert Decimal(ended["charged"].split()[0]) == Decimal(str(cdr["charged"]))
            assert ended["billed s"] == str(cdr["billed_seconds"])
            # Its CDR changed the balance: the figures are read again (within 10 s).
            left = Decimal("10") - Decimal(str(cdr["charged"]))
            wait_until(lambda: Decimal(table_rows(driver, "accounts")["ACME"]["balance"])
                       == left, 15, f"the balance did not become {left}")
            screenshot(driver, tmp_path, "dashboard-call-ended")
    finally:
        conn.close()
