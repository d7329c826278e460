// The display at one machine: who is on it, for how long, how much energy, and the receipt.
//
// Privacy: it shows the first name of the member whose session is open on THIS machine
// (the person standing there), never a badge number, never anyone else. The receipt stays
// up for RECEIPT_S after a session ends, or until the next session opens.
"use strict";

(() => {
  const { $, el, fmt } = CW;
  const RECEIPT_S = 120;
  const REASONS = {
    badge_out: "badged out", takeover: "taken over", idle_timeout: "idle too long", max_duration: "maximum time reached",
    operator: "ended by an operator", offline: "the machine went offline",
  };
  const machineId = decodeURIComponent(location.pathname.split("/").pop());
  const names = new Map();
  let session = null;
  let receiptTimer = null;

  /** The member's first name, if this token may read it; the member id otherwise. */
  async function firstName(memberId) {
    if (!names.has(memberId)) {
      const response = await CW.get(`/api/v1/members/${encodeURIComponent(memberId)}`);
      const name = response.ok ? (await response.json()).name : "";
      names.set(memberId, name.split(/\s+/)[0] || memberId);
    }
    return names.get(memberId);
  }

  async function showMachine(m) {
    document.title = `commonwatt · ${m.name || m.id}`;
    $("machine-name").textContent = m.name || m.id;
    $("state").textContent = m.state === "in_use" ? "in use" : m.state === "free" ? "free: badge to start" : fmt.state(m.state);
    $("state").dataset.state = m.state;
    session = m.session;
    $("session").hidden = !session;
    $("power").textContent = fmt.watts(m.power_w);
    if (!session) return;
    hideReceipt();
    $("energy").textContent = fmt.kwh(session.energy_wh);
    $("hello").textContent = session.member_id ? `Hello ${await firstName(session.member_id)}` : "In use";
    tick();
  }

  function tick() {
    if (session) $("elapsed").textContent = fmt.duration((Date.now() - Date.parse(session.start)) / 1000);
  }

  async function showReceipt(s) {
    const name = await firstName(s.member_id);
    if (session && session.session_id !== s.session_id) return; // taken over: the new session shows
    const rows = [
      ["Member", name], ["From", fmt.time(s.start)], ["To", fmt.time(s.end)],
      ["Time", fmt.duration(Date.parse(s.end) / 1000 - Date.parse(s.start) / 1000)],
      ["Busy / idle", `${fmt.duration(s.busy_s)} / ${fmt.duration(s.idle_s)}`],
      ["Energy", fmt.kwh(s.energy_wh)], ["Ended", REASONS[s.end_reason] ?? s.end_reason],
    ];
    $("receipt-body").replaceChildren(el("p", {}, `Thank you, ${name}.`),
      el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
    $("receipt").hidden = false;
    clearTimeout(receiptTimer);
    receiptTimer = setTimeout(hideReceipt, RECEIPT_S * 1000);
  }

  function hideReceipt() {
    clearTimeout(receiptTimer);
    $("receipt").hidden = true;
  }

  async function start() {
    await showMachine(await CW.json(`/api/v1/machines/${encodeURIComponent(machineId)}`));
    CW.live({ machine: machineId }, {
      machine: showMachine,
      session_closed: showReceipt,
      now: (now) => $("supply").replaceChildren(...CW.supplyBar(now.supply)),
    }, CW.showStatus);
    setInterval(tick, 1000);
  }

  document.addEventListener("DOMContentLoaded", () => CW.run(start));
})();
