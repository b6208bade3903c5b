// Everyone online on every node: one page at a time, searched and filtered on the
// server (GET /api/moderate/sessions, moderation/live.py), updated in place.
//
// A page is at most PAGE cards whatever the crowd; a `sessions` event (any node's
// people changed) fetches the page again at most once a second, and only the cards
// whose person changed are rebuilt: the others keep their element and thumbnail.

import { API, api, esc } from "./api.js";

const PAGE = 60;
const MIN_REFRESH_MS = 1000;
const $ = (sel) => document.querySelector(sel);
const duration = (s) => (s < 60 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
// Node ids are long (host:pid:random); cards show the tail that tells them apart.
export const shortNode = (node) => String(node ?? "").split(":").slice(-2).join(":");

export class LiveList {
  constructor() {
    this.query = { q: "", state: "", node: "", flagged: false, reported: false, offset: 0 };
    this.rows = new Map(); // id -> row of the page shown
    this.cards = new Map(); // id -> {el, key}
    this.thumbTick = 0;
    this.here = null; // the node serving this dashboard
    this.inFlight = null;
    this.again = false;
    this.lastAt = 0;
    this.timer = null;
    let typing = null;
    $("#live-q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => this.set({ q: $("#live-q").value.trim() }), 250);
    });
    $("#live-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      this.set({ q: $("#live-q").value.trim() });
    });
    $("#live-state").addEventListener("change", (e) => this.set({ state: e.target.value }));
    $("#live-node").addEventListener("change", (e) => this.set({ node: e.target.value }));
    $("#live-flagged").addEventListener("change", (e) => this.set({ flagged: e.target.checked }));
    $("#live-reported").addEventListener("change", (e) => this.set({ reported: e.target.checked }));
    $("#live-prev").addEventListener("click", () => this.set({ offset: Math.max(0, this.query.offset - PAGE) }, true));
    $("#live-next").addEventListener("click", () => this.set({ offset: this.query.offset + PAGE }, true));
  }

  /** The row of a person on the page shown (for the actions). */
  row(id) {
    return this.rows.get(id);
  }

  set(change, keepOffset = false) {
    this.query = { ...this.query, ...(keepOffset ? {} : { offset: 0 }), ...change };
    this.refresh(true).catch((e) => console.warn(e));
  }

  /** Fetch and show the page now (`now`) or, for events, at most once a second. */
  async refresh(now = false) {
    if (this.inFlight) {
      this.again = true;
      return this.inFlight;
    }
    const wait = now ? 0 : Math.max(0, this.lastAt + MIN_REFRESH_MS - Date.now());
    if (wait) {
      if (!this.timer) this.timer = setTimeout(() => { this.timer = null; this.refresh(true); }, wait);
      return;
    }
    this.inFlight = this.load().finally(() => {
      this.inFlight = null;
      this.lastAt = Date.now();
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    });
    return this.inFlight;
  }

  async load() {
    const q = this.query;
    const params = new URLSearchParams({ offset: q.offset, limit: PAGE });
    if (q.q) params.set("q", q.q);
    if (q.state) params.set("state", q.state);
    if (q.node) params.set("node", q.node);
    if (q.flagged) params.set("flagged", "1");
    if (q.reported) params.set("reported", "1");
    const page = await api(`/sessions?${params}`);
    if (page.sessions.length === 0 && page.offset > 0 && page.total > 0) {
      // People left and this page emptied: show the last one that has anyone.
      this.query.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
      return this.load();
    }
    this.here = page.node;
    // One node alone: cards need not say where each person is.
    this.alone = page.nodes.length <= 1 && !page.missing.length;
    this.show(page);
    return page;
  }

  show(page) {
    const online = page.nodes.reduce((n, x) => n + x.online, 0);
    const pairs = page.nodes.reduce((n, x) => n + x.paired, 0) / 2;
    const flagged = page.nodes.reduce((n, x) => n + x.flagged, 0);
    const nodes = page.nodes.length;
    $("#summary").textContent =
      `${online} online · ${pairs} pair${pairs === 1 ? "" : "s"} · ${flagged} flagged · ` +
      `${nodes} node${nodes === 1 ? "" : "s"}`;
    $("#live-missing").textContent = page.missing.map((m) => `Not listed: ${m.error}`).join(" ");
    this.showNodes(page.nodes);
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.sessions.length;
    $("#live-range").textContent = page.total
      ? `${first}–${last} of ${page.total}${page.total === online ? "" : ` matching (${online} online)`}`
      : online ? "nobody matches" : "nobody online";
    $("#live-prev").disabled = page.offset === 0;
    $("#live-next").disabled = last >= page.total;

    const grid = $("#sessions");
    this.rows = new Map(page.sessions.map((s) => [s.id, s]));
    for (const [id, card] of this.cards) {
      if (!this.rows.has(id)) {
        card.el.remove();
        this.cards.delete(id);
      }
    }
    page.sessions.forEach((s, i) => {
      // What the card shows, but the counter (set below) and the thumbnail's age (the
      // image reloads in place every few seconds anyway).
      const { onlineSeconds, since, thumbnailAt, ...rest } = s;
      const key = JSON.stringify({ ...rest, thumbnail: Boolean(thumbnailAt), alone: this.alone });
      let card = this.cards.get(s.id);
      if (!card || card.key !== key) {
        const el = this.card(s);
        if (card) card.el.replaceWith(el);
        card = { el, key };
        this.cards.set(s.id, card);
      }
      card.el.querySelector("[data-online]").textContent = duration(onlineSeconds);
      if (grid.children[i] !== card.el) grid.insertBefore(card.el, grid.children[i] ?? null);
    });
    grid.setAttribute("aria-busy", "false");
  }

  showNodes(nodes) {
    const select = $("#live-node");
    const want = ["", ...nodes.map((n) => n.node)];
    if (this.query.node && !want.includes(this.query.node)) want.push(this.query.node);
    const have = [...select.options].map((o) => o.value);
    if (have.join("\n") === want.join("\n")) return;
    select.replaceChildren(...want.map((node) => {
      const option = document.createElement("option");
      option.value = node;
      const count = nodes.find((n) => n.node === node)?.online;
      option.textContent = node ? `${shortNode(node)}${node === this.here ? " (this one)" : ""} · ${count ?? 0}` : "every node";
      return option;
    }));
    select.value = this.query.node;
  }

  thumbUrl(s) {
    const node = s.node === this.here ? "" : `node=${encodeURIComponent(s.node)}&`;
    return `${API}/sessions/${encodeURIComponent(s.id)}/thumbnail?${node}t=${this.thumbTick}`;
  }

  /** Reload the page's thumbnails in place (the cards stay). */
  reloadThumbnails() {
    this.thumbTick += 1;
    for (const img of document.querySelectorAll("#sessions img[data-thumb]")) {
      const s = this.rows.get(img.dataset.thumb);
      if (s) img.src = this.thumbUrl(s);
    }
  }

  card(s) {
    const thumb = s.thumbnailAt
      ? `<img alt="thumbnail of ${esc(s.id)}" data-thumb="${esc(s.id)}" src="${this.thumbUrl(s)}">`
      : `<div class="nothumb">${s.mode === "text" ? "text only" : s.media ? "no picture yet" : "no media"}</div>`;
    const flags = s.flags
      .map((f) => `<span class="flag" title="${esc(f.detail)}">${esc(f.name)}${f.score == null ? "" : ` ${Number(f.score).toFixed(2)}`}</span>`)
      .join("");
    // --nudity-blur: their video is held back from partners until a moderator releases it.
    const held = s.held ? `<span class="flag held" title="${esc(s.held.detail)}">video held from partners</span>` : "";
    const partner = s.partner
      ? ` with <code>${esc(s.partner)}</code>${s.partnerNode && s.partnerNode !== s.node ? ` <span class="node" title="${esc(s.partnerNode)}">@${esc(shortNode(s.partnerNode))}</span>` : ""}`
      : "";
    const pairIds = s.partner ? [s.id, s.partner] : [s.id];
    const pairNodes = s.partner ? [s.node, s.partnerNode ?? s.node] : [s.node];
    const data = `data-ids="${esc(pairIds.join(","))}" data-nodes="${esc(pairNodes.join(","))}"`;
    const one = `data-ids="${esc(s.id)}" data-nodes="${esc(s.node)}"`;
    const el = document.createElement("article");
    el.className = `card${s.flags.length ? " flagged" : ""}`;
    el.dataset.session = s.id;
    el.dataset.node = s.node;
    el.innerHTML = `${thumb}
    <h3>${esc(s.id)} ${s.recording ? '<span class="rec">● REC</span>' : ""}</h3>
    <p class="meta"><span class="state ${esc(s.state)}">${esc(s.state)}</span>${s.away ? ' <span class="state away">away</span>' : ""}${partner}</p>
    <p class="meta">${this.alone ? "" : `on <span class="node" title="${esc(s.node)}">${esc(shortNode(s.node))}</span>${s.node === this.here ? " (this node)" : ""} · `}online <span data-online></span> · ${esc(s.ip ?? "?")}</p>
    <p class="meta">interests: ${esc(s.interests.join(", ") || "none")} · reports: ${s.openReports}</p>
    <div>${flags}${held}</div>
    <div class="actions">
      <button data-act="watch" ${data} ${s.media ? "" : "disabled"}>Watch${s.partner ? " pair" : ""}</button>
      <button data-act="${s.recording ? "stoprec" : "record"}" ${one}>${s.recording ? "Stop rec" : "Record"}</button>
      ${s.partner ? `<button data-act="record" ${data}>Record pair</button>` : ""}
      ${s.held ? `<button data-act="release" ${one} title="Looked, and it is fine: partners see the video again">Show to partner</button>` : ""}
      <button class="danger" data-act="kick" ${one}>Kick</button>
      <button class="danger" data-act="ban" ${one}>Ban</button>
    </div>`;
    return el;
  }
}
