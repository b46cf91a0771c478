// The operator's live dashboard (served by `sidecar api` at /dashboard). A reseller's
// token (scoped to its account) gets its subtree's figures only, and no FAS routes or
// carriers: the summary has a "view" then, and the operator's sections are hidden.
//
// Everything is fetched from this server with the API token in the Authorization header:
// the live calls as server-sent events read from fetch()'s stream (EventSource cannot send
// a header), the rest as JSON. The token is kept in this tab's sessionStorage only. Data
// is put in the page as text (never parsed as HTML): callers and reasons are untrusted.
// Money comes as exact strings and is shown as given; numbers are only parsed to size bars.
"use strict";

const KEY = "sidecar.dashboard.token";
const SUMMARY_EVERY_MS = 15000;
// Calls answered or ended change balances, holds and spend: the figures are read again
// then, at most this often.
const SUMMARY_AFTER_CDR_MS = 10000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(KEY) || "";
let streamAbort = null;
let summaryTimer = null;
let ticks = 0;
let lastCdr = null;
let lastCount = 0;
let summaryAt = 0;
let summaryDue = false;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else if (Array.isArray(c)) {  // [text, class]
      tr.appendChild(el("td", c[0], c[1]));
    } else {
      tr.appendChild(el("td", c));
    }
  }
  return tr;
}

function empty(text) {
  const tr = document.createElement("tr");
  const td = el("td", text, "muted");
  td.colSpan = 20;
  tr.appendChild(td);
  return tr;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s % 60);
}

function clock(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

function headers() {
  return { Authorization: "Bearer " + token };
}

// --- the token ----------------------------------------------------------------------
function lock(message) {
  token = "";
  sessionStorage.removeItem(KEY);
  if (streamAbort) streamAbort.abort();
  if (summaryTimer) clearInterval(summaryTimer);
  document.body.dataset.state = "locked";
  $("main").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("view").hidden = true;
  $("login-error").textContent = message || "";
  setStatus("not connected", "off");
}

function unlock() {
  if (streamAbort) streamAbort.abort();  // a second login replaces the first
  if (summaryTimer) clearInterval(summaryTimer);
  document.body.dataset.state = "open";
  $("login").hidden = true;
  $("main").hidden = false;
  $("forget").hidden = false;
  $("login-error").textContent = "";
  stream();
  loadSummary();
  summaryTimer = setInterval(loadSummary, SUMMARY_EVERY_MS);
}

// --- the live stream ----------------------------------------------------------------
async function stream() {
  const ctrl = new AbortController();
  streamAbort = ctrl;
  while (!ctrl.signal.aborted && token) {
    try {
      const r = await fetch("dashboard/live", { headers: headers(), cache: "no-store",
                                                signal: ctrl.signal });
      if (r.status === 401) { lock("The server refused this token."); return; }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setStatus("connected", "on");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          onEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
      setStatus("stream ended: reconnecting", "warn");
    } catch (e) {
      if (ctrl.signal.aborted) return;
      setStatus("disconnected (" + e.message + "): reconnecting", "warn");
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

function onEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const doc = JSON.parse(data.join("\n"));
  if (type === "live") renderLive(doc);
  else if (type === "error") setStatus("store unavailable: " + doc.error, "warn");
}

function renderLive(doc) {
  ticks += 1;
  document.body.dataset.ticks = String(ticks);
  document.body.dataset.updated = String(doc.now_ms);
  const fields = doc.call_fields;
  const calls = doc.calls.map((r) => Object.fromEntries(fields.map((f, i) => [f, r[i]])));
  setStatus("live · " + clock(doc.now_ms) + " UTC · " + calls.length +
            (calls.length === 1 ? " call up" : " calls up"), "on");
  $("live-count").textContent = String(calls.length);
  const body = document.createDocumentFragment();
  for (const c of calls) {
    const tr = row([c.call_ref, c.account, c.node || "—", c.destination, c.number,
                    [c.rate, "num"], [duration(c.elapsed_ms), "num"], [c.cost, "num cost"],
                    [c.reserved, "num"], [duration(c.remaining_ms), "num"]]);
    tr.dataset.callRef = c.call_ref;
    if (c.remaining_ms < 30000) tr.className = "ending";
    body.appendChild(tr);
  }
  $("live-calls").tBodies[0].replaceChildren(body);
  $("live-empty").hidden = calls.length > 0;
  const totals = $("live-totals");
  totals.replaceChildren(...Object.entries(doc.accounts).map(([acc, cost]) =>
    el("span", acc + ": " + cost, "total")));
  const recent = document.createDocumentFragment();
  for (const d of doc.recent) {
    const tr = row([d.ended ? clock(d.ended_ms) : "—", d.call_ref, d.account || "—",
                    d.destination || "—",
                    [d.disposition + (d.sip_code && d.disposition !== "answered" ? " " + d.sip_code : ""),
                     "disp " + d.disposition],
                    [duration(d.duration_ms || 0), "num"], [d.billed_seconds, "num"],
                    [d.charged + " " + (d.currency || ""), "num"]]);
    tr.dataset.callRef = d.call_ref;
    recent.appendChild(tr);
  }
  if (!doc.recent.length) recent.appendChild(empty("no call has ended yet"));
  const newest = doc.recent.length ? doc.recent[0].id : null;
  // A call answered (credit held) or ended (charged): balances and holds have moved.
  if (ticks > 1 && (newest !== lastCdr || calls.length !== lastCount)) summaryDue = true;
  lastCdr = newest;
  lastCount = calls.length;
  if (summaryDue && Date.now() - summaryAt > SUMMARY_AFTER_CDR_MS) loadSummary();
  $("recent").tBodies[0].replaceChildren(recent);
}

// --- the rest: balances, alerts, charts, FAS, fraud, invoices -------------------------
async function loadSummary() {
  summaryAt = Date.now();
  summaryDue = false;
  try {
    // ?days=N in the page's address: the figures' period (default: the server's, 30).
    const days = new URLSearchParams(location.search).get("days");
    const r = await fetch("dashboard/summary" + (days ? "?days=" + encodeURIComponent(days) : ""),
                          { headers: headers(), cache: "no-store" });
    if (r.status === 401) { lock("The server refused this token."); return; }
    if (r.status === 403) { lock("This token may not read the dashboard."); return; }
    if (!r.ok) throw new Error("HTTP " + r.status);
    renderSummary(await r.json());
  } catch (e) {
    setStatus("could not load the figures: " + e.message, "warn");
  }
}

// Whose view: a reseller's token names its account and how many accounts are below it.
function renderView(v) {
  const box = $("view");
  box.hidden = !v;
  document.body.dataset.view = v ? "reseller" : "operator";
  if (!v) return;
  box.replaceChildren("Reseller view: ", el("strong", v.account),
                      " and " + v.below + (v.below === 1 ? " account" : " accounts") + " below it");
}

function renderSummary(s) {
  renderView(s.view);
  // The operator's sections (FAS route verdicts, carriers): absent for a reseller.
  const operator = Array.isArray(s.fas_routes);
  for (const sec of document.querySelectorAll("[data-operator]")) sec.hidden = !operator;
  $("figures-at").textContent = "figures of " + s.now.slice(11, 19) + " UTC";
  for (const p of document.querySelectorAll(".period")) p.textContent = "last " + s.days + " days";
  const alerts = $("alerts");
  alerts.replaceChildren(...(s.alerts.length ? s.alerts.map((a) => {
    const li = el("li", null, "alert " + a.kind);
    li.append(el("strong", a.account), " " + a.message);
    return li;
  }) : [el("li", "No alert.", "muted")]));
  $("accounts").tBodies[0].replaceChildren(...s.accounts.map((a) => row([
    a.code + (a.parent ? " (" + a.parent + ")" : ""), a.kind + " " + a.currency,
    [a.balance, "num"], [a.held, "num"], [a.available, "num"],
    [a.day_spend, "num"], [a.month_spend, "num"]])));
  hbars($("chart-destination"), s.spend.destination);
  vbars($("chart-day"), s.spend.day);
  hbars($("chart-department"), s.spend.account.map((r) => (
    { ...r, key: r.parent ? r.parent + " / " + r.key : r.key })));
  if (operator) renderOperator(s);
  else for (const id of ["fas", "carriers"]) $(id).tBodies[0].replaceChildren();
  $("fraud").tBodies[0].replaceChildren(...(s.fraud_events.length ? s.fraud_events.map((e) => row([
    e.time.slice(0, 19).replace("T", " "), e.account, e.rule, e.action, e.reason,
    [e.open ? "open" : (e.lifted ? "lifted" : "—"), e.open ? "bad" : ""]])) :
    [empty("no fraud event in this period")]));
  $("invoices").tBodies[0].replaceChildren(...(s.invoices.length ? s.invoices.map((i) => {
    const links = document.createElement("span");
    for (const [fmt, label] of [["html", "HTML"], ["pdf", "PDF"], ["calls.csv", "CSV"]]) {
      const b = el("button", label, "link download");
      b.type = "button";
      b.addEventListener("click", () => download(i.number, fmt));
      links.appendChild(b);
    }
    return row([i.number, i.kind, i.account, i.period, i.issued.slice(0, 10),
                [i.total + " " + i.currency, "num"], links]);
  }) : [empty("no invoice issued")]));
}

// FAS route verdicts and carriers with their margins: the operator's view only.
function renderOperator(s) {
  $("fas").tBodies[0].replaceChildren(...(s.fas_routes.length ? s.fas_routes.map((f) => row([
    f.route, [f.attempts, "num"], [f.answered, "num"], [f.judged ? f.score : "—", "num"],
    [f.judged ? (f.reasons.length ? f.reasons.join("; ") : "clean") : "too few calls",
     f.reasons.length ? "bad" : ""]])) : [empty("no calls in this period")]));
  const margin = new Map(s.margins.map((r) => [r.key, r]));
  $("carriers").tBodies[0].replaceChildren(...(s.carriers.length ? s.carriers.map((c) => {
    const m = margin.get(c.name);
    const state = c.enabled ? "enabled" : (c.disabled_by === "health" ? "pulled" : "disabled") +
      (c.disabled_reason ? ": " + c.disabled_reason : "");
    return row([c.name, [state, c.enabled ? "" : "bad"], [m ? m.calls : 0, "num"],
      [m ? m.sell + " " + m.currency : "—", "num"], [m ? m.buy : "—", "num"],
      [m ? m.margin : "—", "num" + (m && m.margin.startsWith("-") ? " bad" : "")],
      [m && m.margin_percent !== null ? m.margin_percent : "—", "num"],
      [m ? m.losses : 0, "num"]]);
  }) : [empty("no carriers (least-cost routing: sidecar carrier add)")]));
}

async function download(number, fmt) {
  const r = await fetch("v1/invoices/" + encodeURIComponent(number) + "/" + fmt,
                        { headers: headers() });
  if (!r.ok) { setStatus("download failed: HTTP " + r.status, "warn"); return; }
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = number + (fmt === "calls.csv" ? "-calls.csv" : "." + fmt);
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- charts: SVG drawn here ---------------------------------------------------------
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function noData(box) {
  box.replaceChildren(el("p", "No spend in this period.", "muted"));
}

// Horizontal bars, largest first: a label, the bar, the exact amount.
function hbars(box, rows) {
  rows = rows.slice(0, 12);
  if (!rows.length) { noData(box); return; }
  const max = Math.max(...rows.map((r) => parseFloat(r.amount)), 1e-9);
  const rowH = 22, labelW = 150, barW = 240, w = labelW + barW + 120;
  const g = svg("svg", { viewBox: `0 0 ${w} ${rows.length * rowH + 4}`, width: w,
                         height: rows.length * rowH + 4, role: "img" });
  rows.forEach((r, i) => {
    const y = i * rowH + 2;
    const len = Math.max(1, (parseFloat(r.amount) / max) * barW);
    g.appendChild(svg("text", { x: labelW - 6, y: y + 15, "text-anchor": "end",
                                class: "label" }, r.key.length > 22 ? r.key.slice(0, 21) + "…" : r.key));
    const bar = svg("rect", { x: labelW, y: y + 3, width: len, height: rowH - 6, rx: 2,
                              class: "bar" });
    bar.appendChild(svg("title", {}, `${r.key}: ${r.amount} ${r.currency}, ${r.calls} calls`));
    g.appendChild(bar);
    g.appendChild(svg("text", { x: labelW + len + 6, y: y + 15, class: "value" },
                      `${r.amount} ${r.currency}`));
  });
  box.replaceChildren(g);
}

// Vertical bars in date order (one per day).
function vbars(box, rows) {
  rows = rows.slice(-31);
  if (!rows.length) { noData(box); return; }
  const max = Math.max(...rows.map((r) => parseFloat(r.amount)), 1e-9);
  const h = 150, base = h + 4, colW = Math.max(12, Math.min(40, 480 / rows.length));
  const w = rows.length * colW + 60;
  const g = svg("svg", { viewBox: `0 0 ${w} ${h + 40}`, width: w, height: h + 40,
                         role: "img" });
  g.appendChild(svg("text", { x: 0, y: 12, class: "value" },
                    `max ${rows.reduce((a, r) => parseFloat(r.amount) > parseFloat(a.amount) ? r : a).amount} ${rows[0].currency}`));
  rows.forEach((r, i) => {
    const bh = Math.max(1, (parseFloat(r.amount) / max) * (h - 20));
    const x = 50 + i * colW;
    const bar = svg("rect", { x: x + 1, y: base - bh, width: colW - 2, height: bh, rx: 1,
                              class: "bar" });
    bar.appendChild(svg("title", {}, `${r.key}: ${r.amount} ${r.currency}, ${r.calls} calls`));
    g.appendChild(bar);
    if (rows.length <= 10 || i % Math.ceil(rows.length / 8) === 0) {
      g.appendChild(svg("text", { x: x + colW / 2, y: base + 14, "text-anchor": "middle",
                                  class: "label" }, r.key.slice(5)));
    }
  });
  g.appendChild(svg("line", { x1: 48, y1: base, x2: w, y2: base, class: "axis" }));
  box.replaceChildren(g);
}

// --- start ----------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    unlock();
  });
  $("forget").addEventListener("click", () => lock(""));
  if (token) unlock(); else lock("");
});
