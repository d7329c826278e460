// The operator page: every machine live, site power now, badges as they happen, alerts.
"use strict";

(() => {
  const { $, el, fmt } = CW;
  const ROLES = [["pv", "Solar"], ["battery", "Battery"], ["grid", "Grid"], ["site_load", "Site load"], ["machine", "Machines"]];
  const OUTCOMES = {
    session_opened: "session opened", session_closed: "session closed", takeover: "took over",
    trainee: "trainee badge", denied: "denied",
  };

  function machineCard(m) {
    const s = m.session;
    const rows = [];
    if (s) rows.push(["In use since", fmt.time(s.start)], ["Member", s.member_id ?? "(hidden)"], ["Session energy", fmt.kwh(s.energy_wh)]);
    rows.push(["Power", fmt.watts(m.power_w)], ["Relay", m.relay_on === null ? "—" : m.relay_on ? "on" : "off"]);
    if (m.reserved) rows.push(["Reserved", m.reserved_for ?? "yes"]);
    if (m.override_state) rows.push(["Override until", fmt.time(m.override_until)]);
    if (!m.online) rows.push(["Meter", "offline"]);
    return el("article", { class: "card machine", "data-id": m.id, "data-state": m.state },
      el("h3", {}, m.name || m.id, " ", el("a", { href: `/kiosk/${encodeURIComponent(m.id)}`, class: "muted" }, "kiosk")),
      el("span", { class: "chip", "data-state": m.state }, fmt.state(m.state)),
      el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  }

  function showMachine(m) {
    const card = machineCard(m);
    const old = document.querySelector(`#machines [data-id="${CSS.escape(m.id)}"]`);
    if (old) old.replaceWith(card); else $("machines").append(card);
  }

  function showNow(now) {
    const tiles = ROLES.filter(([role]) => role in now.power_w).map(([role, label]) => {
      const w = now.power_w[role];
      let extra = null;
      if (role === "battery") {
        const flow = w > 0 ? "charging" : w < 0 ? "discharging" : "idle";
        extra = el("div", { class: "muted" }, now.soc_pct === null ? flow : `${flow} · ${fmt.pct(now.soc_pct)} full`);
      } else if (role === "grid") {
        extra = el("div", { class: "muted" }, w > 0 ? "importing" : w < 0 ? "exporting" : "");
      }
      return el("div", { class: "card", "data-role": role }, el("div", { class: "muted" }, label),
        el("div", { class: "big" }, fmt.watts(Math.abs(w))), extra);
    });
    if (!tiles.length) tiles.push(el("p", { class: "muted" }, "No power meter has reported recently."));
    $("energy").replaceChildren(...tiles);
    $("supply").replaceChildren(el("div", { class: "muted" }, "Where the site's power comes from now"), ...CW.supplyBar(now.supply));
  }

  function logLine(list, item, cls) {
    const empty = list.querySelector(".muted");
    if (empty) empty.remove();
    list.prepend(el("li", { class: cls }, item));
    while (list.children.length > 50) list.lastChild.remove();
  }

  function showAccess(a) {
    const who = a.member_id ?? (a.badge_uid ? `unknown badge ${a.badge_uid}` : "someone");
    const what = a.allowed ? OUTCOMES[a.outcome] ?? a.outcome : `denied: ${a.reason}`;
    logLine($("badges"), `${fmt.time(a.ts)} · ${a.machine_id} · ${who} · ${what}`, a.allowed ? "access" : "access denied");
  }

  function showAlert(a) {
    logLine($("alerts"), `${fmt.time(a.ts)} · ${a.machine_id} · ${a.alert.replaceAll("_", " ")} · ${a.detail}`, "alert");
  }

  async function loadAlerts() {
    const response = await CW.get("/api/v1/alerts");
    $("alerts").replaceChildren();
    if (response.status === 403) return logLine($("alerts"), "This token may not read alerts (operators, auditors and admins may).", "muted");
    const alerts = await response.json();
    if (!alerts.length) logLine($("alerts"), "No alert in the last 24 hours.", "muted");
    alerts.forEach(showAlert);
  }

  async function start() {
    (await CW.json("/api/v1/machines")).forEach(showMachine);
    await loadAlerts();
    CW.live({}, {
      machine: showMachine, now: showNow, access: showAccess, alert: showAlert,
    }, (isLive) => {
      CW.showStatus(isLive);
      if (isLive) loadAlerts().catch(() => {});
    });
  }

  document.addEventListener("DOMContentLoaded", () => CW.run(start));
})();
