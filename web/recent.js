// Recent strangers: this visit's last few partners, to report or block after they left.
//
// The server names each pair with an opaque `pairId` (sent in `matched`, never anything
// that identifies the partner) and accepts `report` and `block` for a pair that is
// current or ended less than its report window ago (`hello.reportWindow` seconds). This
// list shows those pairs, newest first, and drops each one when its window closes, so
// someone who flashed and pressed Next can still be reported.

import { t } from "./i18n.js";

const MAX_SHOWN = 5;
const DEFAULT_WINDOW_S = 300;
const REFRESH_MS = 15000;

// The report dialog's reasons (web/index.html) and the protocol's categories.
const CATEGORIES = {
  "looks under 18": "minor",
  "nudity or sexual content": "sexual",
  "violence or self-harm": "violence",
  "harassment or hate": "harassment",
  "spam or scam": "spam",
  "something else": "other",
};

export function categoryOf(reason) {
  return CATEGORIES[reason] ?? "other";
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 45) return t("recent.justNow");
  const m = Math.round(s / 60);
  return m === 1 ? t("recent.oneMinAgo") : t("recent.minAgo", { m });
}

export class RecentList {
  /**
   * box      the element shown only while there is someone to list
   * list     the <ol> the entries go in
   * count    where the number of entries is shown
   * onreport(pairId), onblock(pairId)   the person pressed Report or Block
   */
  constructor({ box, list, count, onreport, onblock }) {
    this.box = box;
    this.list = list;
    this.count = count;
    this.onreport = onreport;
    this.onblock = onblock;
    this.windowMs = DEFAULT_WINDOW_S * 1000;
    this.entries = []; // newest first: {pairId, number, interests, endedAt, reported, blocked}
    this.met = 0;
    this.timer = setInterval(() => this.render(), REFRESH_MS);
    // Open where there is room; on a phone the chat needs the height (a tap opens it).
    box.open = !window.matchMedia("(max-width: 900px)").matches;
  }

  setWindow(seconds) {
    if (Number.isFinite(seconds) && seconds > 0) this.windowMs = seconds * 1000;
  }

  started(pairId, interests = []) {
    if (typeof pairId !== "string" || !pairId) return;
    for (const e of this.entries) if (e.endedAt === null) e.endedAt = Date.now();
    this.met += 1;
    this.entries.unshift({ pairId, number: this.met, interests, endedAt: null, reported: false, blocked: false });
    this.entries.length = Math.min(this.entries.length, MAX_SHOWN);
    this.render();
  }

  ended(pairId) {
    const e = this.find(pairId);
    if (e && e.endedAt === null) e.endedAt = Date.now();
    this.render();
  }

  find(pairId) {
    return this.entries.find((e) => e.pairId === pairId);
  }

  mark(pairId, what) {
    const e = this.find(pairId);
    if (!e) return;
    e[what] = true;
    if (what === "reported") e.blocked = true; // a report is a block too
    this.render();
  }

  render() {
    const now = Date.now();
    this.entries = this.entries.filter((e) => e.endedAt === null || now - e.endedAt < this.windowMs);
    this.box.hidden = this.entries.length === 0;
    this.count.textContent = String(this.entries.length);
    this.list.replaceChildren(...this.entries.map((e) => this.item(e, now)));
  }

  item(e, now) {
    const li = document.createElement("li");
    li.className = "recent-item";
    li.dataset.pairId = e.pairId;
    const who = document.createElement("span");
    who.className = "recent-who";
    const name = document.createElement("strong");
    name.textContent = t("recent.stranger", { n: e.number });
    const when = document.createElement("span");
    when.className = "recent-when";
    when.textContent = e.endedAt === null ? t("recent.talkingNow") : ago(now - e.endedAt);
    who.append(name, when);
    li.append(who);
    if (e.reported || e.blocked) {
      const done = document.createElement("span");
      done.className = "recent-done";
      done.textContent = e.reported ? t("recent.reported") : t("recent.blocked");
      li.append(done);
      return li;
    }
    const report = document.createElement("button");
    report.type = "button";
    report.className = "btn-small btn-small-danger";
    report.textContent = t("recent.report");
    report.setAttribute("aria-label", t("recent.reportAria", { n: e.number }));
    report.addEventListener("click", () => this.onreport(e.pairId));
    const block = document.createElement("button");
    block.type = "button";
    block.className = "btn-small";
    block.textContent = t("recent.block");
    block.setAttribute("aria-label", t("recent.blockAria", { n: e.number }));
    block.addEventListener("click", () => this.onblock(e.pairId));
    li.append(report, block);
    return li;
  }
}
