// A member's page: my sessions (live), and my statement and proofs when the gateway keeps a ledger.
"use strict";

(() => {
  const { $, el, fmt } = CW;
  const REASONS = {
    badge_out: "badged out", takeover: "taken over", idle_timeout: "idle", max_duration: "maximum time",
    operator: "operator", offline: "offline",
  };

  function row(s) {
    const end = s.open ? null : s.end;
    const seconds = ((end ? Date.parse(end) : Date.now()) - Date.parse(s.start)) / 1000;
    return el("tr", { "data-session": s.session_id },
      el("td", {}, s.machine_id), el("td", {}, fmt.date(s.start)), el("td", {}, s.open ? "open now" : fmt.date(end)),
      el("td", { class: "num" }, fmt.duration(seconds)), el("td", { class: "num" }, fmt.kwh(s.energy_wh)),
      el("td", {}, s.open ? "" : REASONS[s.end_reason] ?? s.end_reason));
  }

  async function loadSessions() {
    const sessions = await CW.json("/api/v1/sessions?limit=1000");
    sessions.reverse(); // newest first
    $("sessions").replaceChildren(...sessions.map(row));
    const wh = sessions.reduce((sum, s) => sum + s.energy_wh, 0);
    const busy = sessions.reduce((sum, s) => sum + s.busy_s, 0);
    $("totals").textContent = sessions.length
      ? `${sessions.length} sessions · ${fmt.duration(busy)} busy · ${fmt.kwh(wh)}`
      : "No session yet.";
  }

  /** Offered only when the gateway keeps the credit ledger: it answers /api/v1/audit/checkpoints. */
  async function loadLedger() {
    const response = await CW.get("/api/v1/audit/checkpoints");
    if (response.status !== 200) {
      $("ledger").replaceChildren("The credit ledger is not enabled on this gateway: there are no statements or proofs to show.");
      return;
    }
    const checkpoints = await response.json();
    const blob = new Blob([JSON.stringify(checkpoints, null, 2)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: "commonwatt-checkpoints.json" }, "Download the signed checkpoints");
    $("ledger").replaceChildren(el("p", {}, "The gateway keeps a credit ledger. Its signed checkpoints, to check your proofs against: "), link);
  }

  async function start() {
    const me = (await CW.json("/api/v1/members"))[0];
    if (me) $("who").textContent = `commonwatt · ${me.name}`;
    await loadSessions();
    await loadLedger();
    CW.live({}, { session_opened: loadSessions, session_closed: loadSessions }, CW.showStatus);
  }

  document.addEventListener("DOMContentLoaded", () => CW.run(start));
})();
