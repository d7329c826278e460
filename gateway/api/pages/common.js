// What the three pages share: the token, API calls, the live feed, formatting.
// Plain JavaScript, no build step: the browser runs this file as it is.
"use strict";

const CW = (() => {
  const KEY = "commonwatt.token";

  class AuthError extends Error {}

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text, never HTML). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function token() { return localStorage.getItem(KEY); }

  /** Show the token form (with a reason), hide the page, call `start` once a token is saved. */
  function askToken(start, reason) {
    $("login").hidden = false;
    $("content").hidden = true;
    $("login-msg").textContent = reason || "";
    $("login").onsubmit = (ev) => {
      ev.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      localStorage.setItem(KEY, value);
      $("token-input").value = "";
      run(start);
    };
  }

  /** Run the page's `start` with the saved token; ask for one when there is none or it is refused. */
  async function run(start) {
    if (!token()) return askToken(start, "This page reads the gateway's API: paste a token from `commonwatt tokens create`.");
    $("login").hidden = true;
    $("content").hidden = false;
    const out = $("sign-out");
    if (out) out.onclick = () => { localStorage.removeItem(KEY); location.reload(); };
    try {
      await start();
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      localStorage.removeItem(KEY);
      askToken(start, err.message);
    }
  }

  /** GET an API path with the token; AuthError on 401, the response otherwise. */
  async function get(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
    if (response.status === 401) throw new AuthError("The gateway refused this token (unknown, revoked, or its member is inactive).");
    return response;
  }

  async function json(path) {
    const response = await get(path);
    if (!response.ok) throw new Error(`${path}: ${response.status}`);
    return response.json();
  }

  /** Listen to the live feed. `handlers`: event name -> function(data). `onStatus(true|false)`. */
  function live(params, handlers, onStatus) {
    // EventSource sends no headers: the stream takes the token in the query string.
    const query = new URLSearchParams({ ...params, token: token() });
    const source = new EventSource(`/api/v1/events/stream?${query}`);
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (ev) => handle(JSON.parse(ev.data)));
    }
    source.onopen = () => onStatus(true);
    source.onerror = () => onStatus(false);
    return source;
  }

  function showStatus(isLive) {
    const node = $("status");
    node.dataset.live = isLive ? "yes" : "no";
    node.textContent = isLive ? "live" : "reconnecting…";
  }

  const fmt = {
    time: (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "—"),
    date: (iso) => (iso ? new Date(iso).toLocaleString([], { hour12: false }) : "—"),
    watts: (w) => (w === null || w === undefined ? "—" : Math.abs(w) >= 1000 ? `${(w / 1000).toFixed(2)} kW` : `${Math.round(w)} W`),
    kwh: (wh) => (wh === null || wh === undefined ? "—" : `${(wh / 1000).toFixed(3)} kWh`),
    pct: (x) => (x === null || x === undefined ? "—" : `${Math.round(x)} %`),
    duration(seconds) {
      if (seconds === null || seconds === undefined) return "—";
      const s = Math.max(0, Math.floor(seconds));
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
      return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min ${String(r).padStart(2, "0")} s`;
    },
    state: (s) => String(s).replace("_", " "),
  };

  /** A bar of the site's supply shares (sun, battery, grid), and its caption. */
  function supplyBar(supply) {
    if (!supply) return [el("p", { class: "muted" }, "No supply measured right now.")];
    const bar = el("div", { class: "bar", role: "img", "aria-label": "supply mix" });
    const words = [];
    for (const source of ["sun", "battery", "grid"]) {
      const share = supply[source] || 0;
      const part = el("span", { class: source });
      part.style.width = `${share * 100}%`;
      bar.append(part);
      if (share > 0) words.push(`${Math.round(share * 100)} % ${source}`);
    }
    return [bar, el("p", { class: "muted" }, words.join(" · "))];
  }

  return { $, el, run, get, json, live, showStatus, fmt, supplyBar, AuthError };
})();
