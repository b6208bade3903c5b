// The report queue: open reports most urgent first (the server orders them:
// moderation/queue.py), one selected at a time, worked from the keyboard.
//
// Keys (not while typing or while a dialog is open):
//   j / ↓  next report      k / ↑  previous report
//   c      claim            b      ban (dialog)        d  dismiss (no violation)
//   w      resolve as warned                            e  play the evidence
//   h      the person's history                         ?  these keys

import { API, ago, api, esc, when } from "./api.js";
import { askBan } from "./bandialog.js";

const $ = (sel) => document.querySelector(sel);
const LABELS = {
  minor: "minor",
  sexual: "sexual",
  violence: "violence",
  harassment: "harassment",
  other: "other",
  spam: "spam",
};

export class Queue {
  constructor({ onchange }) {
    this.items = [];
    this.selected = null; // report id
    this.history = null; // {subject, reports, bans} of the selected person, when asked
    this.onchange = onchange;
    $("#queue").addEventListener("click", (event) => {
      const li = event.target.closest("li[data-id]");
      if (li) this.select(Number(li.dataset.id));
    });
    $("#queue-detail").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-key]");
      if (button) this.act(button.dataset.key);
    });
    document.addEventListener("keydown", (event) => this.onKey(event));
  }

  async refresh() {
    const { queue } = await api("/queue");
    this.items = queue;
    if (!this.items.some((r) => r.id === this.selected)) {
      this.selected = this.items[0]?.id ?? null;
      this.history = null;
    }
    this.render();
  }

  get current() {
    return this.items.find((r) => r.id === this.selected) ?? null;
  }

  select(id) {
    if (id === this.selected) return;
    this.selected = id;
    this.history = null;
    this.render();
    $(`#queue li[data-id="${id}"]`)?.scrollIntoView({ block: "nearest" });
  }

  move(step) {
    if (!this.items.length) return;
    const at = this.items.findIndex((r) => r.id === this.selected);
    const next = Math.min(this.items.length - 1, Math.max(0, at + step));
    this.select(this.items[next].id);
  }

  onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select, [contenteditable]")) return;
    if (document.querySelector("dialog[open]")) return;
    const key = { ArrowDown: "j", ArrowUp: "k" }[event.key] ?? event.key;
    if (!"jkcbdweh?".includes(key) || key.length !== 1) return;
    event.preventDefault();
    this.act(key);
  }

  async act(key) {
    const report = this.current;
    try {
      switch (key) {
        case "j": return this.move(1);
        case "k": return this.move(-1);
        case "?": return $("#queue-keys").toggleAttribute("hidden");
      }
      if (!report) return;
      switch (key) {
        case "c":
          await api(`/reports/${report.id}/claim`, { method: "POST", body: {} });
          this.status(`Report ${report.id} is yours.`);
          break;
        case "b": {
          const ban = await askBan(
            {
              title: `the person reported in #${report.id}`,
              reason: report.reason,
              hasIdentity: report.hasIdentity,
              hasAddress: report.hasAddress,
              sharing: report.sharingAddress,
            },
            (terms) => api(`/reports/${report.id}/ban`, { method: "POST", body: terms }),
          );
          if (!ban) return;
          this.status(`Banned (ban ${ban.id}); report ${report.id} resolved.`);
          break;
        }
        case "d":
        case "w": {
          const decision = key === "d" ? "no_violation" : "warned";
          const note = $("#queue-note")?.value ?? "";
          await api(`/reports/${report.id}/review`, { method: "POST", body: { decision, note } });
          this.status(`Report ${report.id}: ${decision.replace("_", " ")}.`);
          break;
        }
        case "e": return this.playEvidence(report);
        case "h":
          this.history = this.history ? null : await api(`/history/${encodeURIComponent(report.subject)}`);
          return this.render();
      }
      await this.refresh();
      this.onchange?.();
    } catch (error) {
      this.status(error.message, true);
    }
  }

  status(text, bad = false) {
    const line = $("#queue-status");
    line.textContent = text;
    line.classList.toggle("bad", bad);
  }

  playEvidence(report) {
    if (!report.evidence) return this.status("This report has no evidence file.", true);
    const name = encodeURIComponent(report.evidence);
    $("#queue-detail .evidence").hidden = false;
    const players = ["reported", "reporter"].map((part) => $(`#evidence-${part}`));
    players.forEach((video, i) => {
      video.src = `${API}/recordings/${name}?part=${i ? "reporter" : "reported"}`;
      video.hidden = false;
    });
    // Both parts keep the file's one clock: play them together.
    const [lead, other] = players;
    lead.onplay = () => other.play().catch(() => {});
    lead.onpause = () => other.pause();
    lead.onseeked = () => { other.currentTime = lead.currentTime; };
    lead.play().catch(() => {});
  }

  render() {
    $("#queue-count").textContent = `(${this.items.length})`;
    $("#queue").innerHTML = this.items.map((r) => `<li role="option" data-id="${r.id}"
        aria-selected="${r.id === this.selected}" class="sev-${esc(r.category)}">
      <span class="chip">${esc(LABELS[r.category] ?? r.category)}</span>
      <span class="q-reason">${esc(r.reason)}</span>
      <span class="q-meta">${r.reporters24h} reporter${r.reporters24h === 1 ? "" : "s"}/24h · ${ago(r.createdAt)}${r.online ? ' · <b class="online">online</b>' : ""}${r.claimedBy ? ` · ${esc(r.claimedBy)}` : ""}</span>
    </li>`).join("") || '<li class="empty">Nothing to review.</li>';
    // Rewritten only when what it shows changes: a refresh must not stop the evidence
    // playing or lose a note being typed.
    const r = this.current;
    const key = r ? `${r.id}:${r.claimedBy}:${r.reporters24h}:${Boolean(this.history)}` : "";
    if (key !== this.detailKey) {
      this.detailKey = key;
      $("#queue-detail").innerHTML = this.detail(r);
    }
  }

  detail(r) {
    if (!r) return '<p class="meta">Select a report.</p>';
    const transcript = r.transcript.length
      ? r.transcript.map((l) => `<li><time>${new Date(l.at * 1000).toLocaleTimeString()}</time>
          <b>${l.sender === r.reportedId ? "reported" : "reporter"}</b> ${esc(l.text)}</li>`).join("")
      : '<li class="meta">no chat</li>';
    const history = this.history ? `<h4>History</h4><ul class="history">${
      this.history.reports.map((h) => `<li>#${h.id} ${esc(h.category)} · ${when(h.createdAt)} · ${
        h.status === "open" ? "open" : esc(h.decision ?? "reviewed")}${h.note ? ` (${esc(h.note)})` : ""}</li>`).join("")
    }${this.history.bans.map((b) => `<li>ban ${b.id} until ${b.expiresAt ? when(b.expiresAt) : "for good"}: ${esc(b.reason)}</li>`).join("")}</ul>` : "";
    return `<h3>#${r.id} <span class="chip sev-${esc(r.category)}">${esc(r.category)}</span></h3>
      <p>${esc(r.reason)}</p>
      <p class="meta">${when(r.createdAt)} · ${r.reporters24h} distinct reporter${r.reporters24h === 1 ? "" : "s"} in 24 h ·
        ${r.online ? "online now" : "gone"} · ${r.sharingAddress} online at their address ·
        ${r.claimedBy ? `claimed by ${esc(r.claimedBy)}` : "unclaimed"}</p>
      <div class="q-actions">
        <button data-key="c">Claim <kbd>c</kbd></button>
        <button data-key="b" class="danger">Ban… <kbd>b</kbd></button>
        <button data-key="w">Warned <kbd>w</kbd></button>
        <button data-key="d">Dismiss <kbd>d</kbd></button>
        <button data-key="e" ${r.evidence ? "" : "disabled"}>Evidence <kbd>e</kbd></button>
        <button data-key="h">History <kbd>h</kbd></button>
      </div>
      <input id="queue-note" type="text" maxlength="500" placeholder="note for the decision (optional)">
      <div class="evidence" hidden>
        <figure><video id="evidence-reported" controls muted hidden></video><figcaption>reported</figcaption></figure>
        <figure><video id="evidence-reporter" controls muted hidden></video><figcaption>reporter</figcaption></figure>
      </div>
      <h4>Chat</h4><ol class="transcript">${transcript}</ol>
      ${history}`;
  }
}
