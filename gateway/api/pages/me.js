// A member's page: my sessions (live); and, when the gateway keeps the credit ledger, my
// statement for this month and the last (with CSV, HTML and JSON to download), my credit
// transactions, and the inclusion proof of each to download and check offline with
// `commonwatt audit check-proof FILES --key KEY`.
"use strict";

(() => {
  const { $, el, fmt } = CW;
  const REASONS = {
    badge_out: "badged out", takeover: "taken over", idle_timeout: "idle", max_duration: "maximum time",
    operator: "operator", offline: "offline",
  };
  /** The statement's credit lines, in the order they add up (opening ... = closing). */
  const LINES = [
    ["opening", "Opening balance"], ["charged", "Charged"], ["allowance", "Allowance"],
    ["allowance_expired", "Allowance expired"], ["contributions", "Contributions"], ["other", "Other"],
    ["closing", "Closing balance"],
  ];
  const KINDS = {
    charge: "session", allowance: "allowance", allowance_expiry: "allowance expired", contribution: "contribution",
    reversal: "reversal", adjustment: "adjustment",
  };
  const SOURCES = ["sun", "battery", "grid"];

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

  // -- files ------------------------------------------------------------------------------

  /** Hand `blob` to the browser as a download called `name`. */
  function save(blob, name) {
    const link = el("a", { href: URL.createObjectURL(blob), download: name, hidden: "" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  }

  /** The API's reason for a refusal (`detail`), or the status line. */
  async function reason(response) {
    try {
      const { detail } = await response.json();
      return typeof detail === "string" ? detail : detail.join("; ");
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  /** GET `path` with the token and save the answer as it came, named as the API says or `name`. */
  async function download(path, name) {
    const response = await CW.get(path);
    if (!response.ok) throw new Error(`${path}: ${await reason(response)}`);
    const given = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
    save(await response.blob(), given ? given[1] : name);
  }

  function say(text) {
    $("proof-msg").textContent = text;
  }

  /** A button running `action`; a failure is said under the transactions, never thrown at the page. */
  function button(label, attrs, action) {
    const node = el("button", { type: "button", ...attrs }, label);
    node.onclick = async () => {
      node.disabled = true;
      try {
        await action();
      } catch (err) {
        say(err.message);
      } finally {
        node.disabled = false;
      }
    };
    return node;
  }

  // -- figures ----------------------------------------------------------------------------

  /** Milli-credits as credits with three decimals, exactly (the ledger's integers, no float sums). */
  function credits(mcr) {
    const abs = Math.abs(mcr);
    return `${mcr < 0 ? "-" : ""}${Math.floor(abs / 1000)}.${String(abs % 1000).padStart(3, "0")}`;
  }

  function monthOf(date) {
    return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}`;
  }

  /** This month and the last, as `YYYY-MM` (the browser's calendar; the gateway cuts at the site's midnight). */
  function recentMonths() {
    const now = new Date();
    return [monthOf(now), monthOf(new Date(now.getFullYear(), now.getMonth() - 1, 1))];
  }

  function pairs(entries) {
    return el("dl", {}, entries.map(([term, value, key]) => [el("dt", {}, term), el("dd", { "data-line": key }, value)]));
  }

  // -- my statement -----------------------------------------------------------------------

  function statementPath(memberId, month) {
    return `/api/v1/members/${encodeURIComponent(memberId)}/statements/${month}`;
  }

  function statementCard(memberId, doc) {
    const t = doc.totals, c = doc.credits;
    const mwh = SOURCES.reduce((sum, s) => sum + t.mwh[s], 0);
    const files = ["csv", "html", "json"].map((format) =>
      button(format.toUpperCase(), { "data-format": format },
        () => download(`${statementPath(memberId, doc.month)}?format=${format}`, `statement-${memberId}-${doc.month}.${format}`)));
    return el("div", { class: "card statement", "data-month": doc.month },
      el("h3", {}, doc.month),
      el("p", { class: "muted" },
        `${t.sessions} session${t.sessions === 1 ? "" : "s"} · ${fmt.duration(t.busy_s)} busy · ${(mwh / 1e6).toFixed(3)} kWh`),
      pairs([...SOURCES.map((s) => [`${s} kWh`, t.kwh[s], `${s}_kwh`]), ["CO₂ g", t.co2_g, "co2_g"]]),
      pairs(LINES.map(([key, label]) => [label, c[key].credits, key])),
      el("p", {}, "Download: ", files));
  }

  /** This month's and last month's statements; the transactions their proofs do not cover yet. */
  async function loadStatements(memberId) {
    const waiting = new Set();
    const cards = await Promise.all(recentMonths().map(async (month) => {
      const response = await CW.get(statementPath(memberId, month));
      if (!response.ok) {
        return el("div", { class: "card statement", "data-month": month }, el("h3", {}, month),
          el("p", { class: "muted" }, `No statement: ${await reason(response)}`));
      }
      const doc = await response.json();
      for (const w of doc.proofs?.not_yet_provable ?? []) waiting.add(w.tx_id);
      return statementCard(memberId, doc);
    }));
    $("statements").replaceChildren(...cards);
    return waiting;
  }

  // -- my transactions and their proofs ---------------------------------------------------

  const NOT_YET = "after the next signed checkpoint";

  /** The proof of one transaction as the API serves it, or null when no signed checkpoint covers it yet. */
  async function fetchProof(txId) {
    const response = await CW.get(`/api/v1/audit/proof/${txId}`);
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`transaction ${txId}: ${await reason(response)}`);
    return response;
  }

  function markWaiting(txId) {
    const cell = document.querySelector(`#transactions tr[data-tx="${txId}"] td.proof`);
    if (cell) cell.replaceChildren(el("span", { class: "muted" }, NOT_YET));
  }

  async function downloadProof(txId) {
    const response = await fetchProof(txId);
    if (response === null) {
      markWaiting(txId);
      say(`Transaction ${txId} is not under a signed checkpoint yet; the next one covers it.`);
      return;
    }
    save(await response.blob(), `commonwatt-proof-${txId}.json`);
    say(`Saved the proof of transaction ${txId}.`);
  }

  /** One file with the proofs of every transaction listed (a JSON list, which check-proof reads as it is). */
  async function downloadAll(memberId, txIds) {
    const bundles = [], later = [];
    for (const txId of txIds) {
      const response = await fetchProof(txId);
      if (response === null) {
        later.push(txId);
        markWaiting(txId);
      } else {
        bundles.push(await response.json());
      }
    }
    const pending = later.length ? ` Not under a signed checkpoint yet: ${later.join(", ")}.` : "";
    if (!bundles.length) {
      say(`No proof to save yet.${pending}`);
      return;
    }
    save(new Blob([JSON.stringify(bundles, null, 1)], { type: "application/json" }), `commonwatt-proofs-${memberId}.json`);
    say(`Saved ${bundles.length} proof${bundles.length === 1 ? "" : "s"} in one file.${pending}`);
  }

  function transactionRows(account, transactions, balance, waiting) {
    let after = balance; // walking back from the newest: the balance after each transaction
    const rows = [];
    for (const tx of [...transactions].reverse()) {
      const mcr = tx.postings.filter((p) => p.account === account).reduce((sum, p) => sum + p.amount.mcr, 0);
      const proof = waiting.has(tx.id)
        ? el("span", { class: "muted" }, NOT_YET)
        : button("Download", { "data-proof": tx.id }, () => downloadProof(tx.id));
      rows.push(el("tr", { "data-tx": tx.id },
        el("td", { class: "num" }, tx.id), el("td", {}, fmt.date(new Date(tx.ts_ms).toISOString())),
        el("td", {}, `${KINDS[tx.kind] ?? tx.kind}${tx.memo ? ` · ${tx.memo}` : ""}`),
        el("td", { class: "num" }, credits(mcr)), el("td", { class: "num" }, credits(after)),
        el("td", { class: "proof" }, proof)));
      after -= mcr;
    }
    return rows;
  }

  async function loadTransactions(memberId, waiting) {
    const account = await CW.json(`/api/v1/ledger/members/${encodeURIComponent(memberId)}`);
    const key = await CW.json("/api/v1/audit/key");
    const checkpoints = await CW.json("/api/v1/audit/checkpoints");
    const ids = account.transactions.map((tx) => tx.id);
    const blob = new Blob([JSON.stringify(checkpoints, null, 2)], { type: "application/json" });
    $("ledger").replaceChildren(
      el("p", { id: "balance" }, `Balance ${account.balance.credits} credits`,
        account.may_start_session ? "" : " · below the credit limit: a machine will not start for you",
        ` · ${ids.length} latest transaction${ids.length === 1 ? "" : "s"} below, newest first.`),
      el("p", {},
        "Each transaction's inclusion proof shows it is in the lab's signed, append-only log. Check the files offline with ",
        el("code", {}, `commonwatt audit check-proof FILES --key '${key.log_key}'`),
        ", comparing that key with the one your lab publishes."),
      el("p", {},
        ids.length ? button("Download all my proofs", { id: "all-proofs" }, () => downloadAll(memberId, ids)) : "",
        " ", el("a", { href: URL.createObjectURL(blob), download: "commonwatt-checkpoints.json" },
          `Download the ${checkpoints.length} signed checkpoint${checkpoints.length === 1 ? "" : "s"}`),
        " ", button("Refresh", { id: "ledger-refresh" }, () => loadLedger(memberId))));
    $("transactions").replaceChildren(...transactionRows(`member:${memberId}`, account.transactions, account.balance.mcr, waiting));
    $("transactions-table").hidden = ids.length === 0;
  }

  /** Offered only when the gateway keeps the credit ledger: it answers /api/v1/audit/checkpoints. */
  async function loadLedger(memberId) {
    const response = await CW.get("/api/v1/audit/checkpoints");
    if (response.status !== 200) {
      const off = "The credit ledger is not enabled on this gateway: there are no statements or proofs to show.";
      $("ledger").replaceChildren(off);
      $("statements").replaceChildren(el("p", { class: "muted" }, off));
      return;
    }
    if (memberId === null) {
      const whose = "Statements and proofs are a member's own: open this page with a member token to see yours.";
      $("ledger").replaceChildren(whose);
      $("statements").replaceChildren(el("p", { class: "muted" }, whose));
      return;
    }
    say("");
    const waiting = await loadStatements(memberId);
    await loadTransactions(memberId, waiting);
  }

  async function start() {
    // A member token sees exactly one member: its own. A token that reads everyone has no "me".
    const members = await CW.json("/api/v1/members");
    const me = members.length === 1 ? members[0] : null;
    if (me) $("who").textContent = `commonwatt · ${me.name}`;
    await loadSessions();
    await loadLedger(me ? me.id : null);
    CW.live({}, { session_opened: loadSessions, session_closed: loadSessions }, CW.showStatus);
  }

  document.addEventListener("DOMContentLoaded", () => CW.run(start));
})();
