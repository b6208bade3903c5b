// The moderation dashboard: the report queue (queue.js), everyone online with
// thumbnails, watching pairs live, recordings, bans and the audit log.
// Served only behind moderator authentication (moderation/routes.py).

import { API, api, esc, when } from "./api.js";
import { askBan } from "./bandialog.js";
import { LiveList } from "./live.js";
import { Queue } from "./queue.js";

// Server-sent events say when something changed (moderation/events.py, on any node of
// the cluster); these slow polls only cover a dropped event stream and the
// "online for" counters.
const POLL_MS = 10000;
const QUEUE_MS = 30000;
const THUMB_MS = 2000;

const $ = (sel) => document.querySelector(sel);
const live = new LiveList();
const refreshSessions = () => live.refresh(true);

let watching = null; // {id, pc, sessionIds}

async function refreshTables() {
  const [{ recordings }, { bans }, { audit }] = await Promise.all([
    api("/recordings"), api("/bans"), api("/audit"),
  ]);
  $("#recordings tbody").innerHTML = recordings.map((r) => `<tr>
    <td><code>${esc(r.name)}</code>${r.live ? ' <span class="rec">● recording</span>' : ""}</td><td>${Math.round(r.bytes / 1024)} KiB</td><td>${when(r.modified)}</td>
    <td>${r.live ? "" : `<button data-act="play" data-name="${esc(r.name)}" data-node="${esc(r.node ?? "")}">play</button> <a href="${esc(recordingUrl(r.name, r.node, true))}">download</a>`}</td></tr>`).join("");
  $("#bans tbody").innerHTML = bans.map((b) => `<tr>
    <td>${b.id}</td><td><code>${esc(b.identity ?? (b.person ? "browser of a report" : ""))}</code></td><td>${esc(b.ip ?? (b.address ? "address of a report" : ""))}</td><td>${esc(b.reason)}</td>
    <td>${b.expiresAt ? when(b.expiresAt) : "for good"}</td><td>${esc(b.createdBy)}</td>
    <td>${!b.expiresAt || b.expiresAt > Date.now() / 1000 ? `<button data-act="lift" data-id="${b.id}">lift</button>` : ""}</td></tr>`).join("");
  $("#audit tbody").innerHTML = audit.slice(0, 50).map((e) => `<tr>
    <td>${when(e.at)}</td><td>${esc(e.who)}</td><td>${esc(e.action)}</td><td><code>${esc(e.target)}</code></td><td>${esc(e.detail)}</td></tr>`).join("");
}

// ---------- watching a pair ----------

// `nodes[i]` holds `ids[i]`; requests name the node of the first (moderation/live.py
// lists each person with theirs), so a person on another node can be watched through it.
async function watch(ids, nodes) {
  await stopWatching();
  const pc = new RTCPeerConnection();
  const streams = ids.map(() => new MediaStream());
  // Per watched user: audio then video, in the order of `ids` (rtc/watcher.py).
  const transceivers = [];
  for (const _ of ids) {
    transceivers.push(pc.addTransceiver("audio", { direction: "recvonly" }));
    transceivers.push(pc.addTransceiver("video", { direction: "recvonly" }));
  }
  transceivers.forEach((t, i) => streams[Math.floor(i / 2)].addTrack(t.receiver.track));
  ids.forEach((id, i) => {
    $(`#watch-video-${i}`).srcObject = streams[i];
    $(`#watch-name-${i}`).textContent = id;
  });
  if (ids.length < 2) {
    $("#watch-video-1").srcObject = null;
    $("#watch-name-1").textContent = "";
  }
  await pc.setLocalDescription(await pc.createOffer());
  // No trickle: the server answers once, so send every candidate with the offer.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, 3000);
  });
  const answer = await api("/watch", { method: "POST", body: { sessionIds: ids, sdp: pc.localDescription.sdp, ...nodeOf(nodes) } });
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  watching = { id: answer.watchId, pc, ids, chat: setInterval(() => showChat(ids, nodes).catch(() => {}), 1000) };
  await showChat(ids, nodes);
  $("#watch-who").textContent = ids.join(" & ");
  $("#watch").hidden = false;
}

async function stopWatching() {
  if (!watching) return;
  const { id, pc, chat } = watching;
  clearInterval(chat);
  $("#watch-chat").replaceChildren();
  watching = null;
  pc.close();
  $("#watch").hidden = true;
  await api(`/watch/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
}

// The watched pair's chat, live (the first watched person's pair: both directions).
async function showChat(ids, nodes) {
  // The first watched person's pair chat, asked of the node holding them.
  const node = nodes?.[0] && nodes[0] !== live.here ? `?node=${encodeURIComponent(nodes[0])}` : "";
  const { chat } = await api(`/sessions/${encodeURIComponent(ids[0])}/chat${node}`);
  $("#watch-chat").innerHTML = chat.map((l) => `<li><time>${new Date(l.at * 1000).toLocaleTimeString()}</time>
    <b>${esc(l.sender)}</b> ${esc(l.text)}</li>`).join("") || '<li class="meta">no chat yet</li>';
}

// A recording's address; naming the node that holds it spares every node the search
// (the player asks again for each byte range it seeks to).
function recordingUrl(name, node, download = false) {
  const query = new URLSearchParams();
  if (node && node !== live.here) query.set("node", node);
  if (download) query.set("download", "1");
  const url = `${API}/recordings/${encodeURIComponent(name)}`;
  return query.toString() ? `${url}?${query}` : url;
}

function play(name, node) {
  const player = $("#player");
  player.hidden = false;
  player.src = recordingUrl(name, node);
  player.play().catch(() => {});
}

// ---------- actions ----------

// `{node}` for a request about people of which some are on another node: one node id
// per session id (a pair may span two nodes); nothing when all are this node's own.
function nodeOf(nodes) {
  if (!nodes?.some((node) => node && node !== live.here)) return {};
  return { node: nodes.length === 1 ? nodes[0] : nodes };
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-act]");
  if (!button) return;
  const ids = (button.dataset.ids ?? "").split(",").filter(Boolean);
  const nodes = (button.dataset.nodes ?? "").split(",").filter(Boolean);
  const where = nodeOf(nodes);
  try {
    switch (button.dataset.act) {
      case "watch": return await watch(ids, nodes);
      case "record": await api("/recordings", { method: "POST", body: { sessionIds: ids, ...where } }); break;
      case "stoprec": await api("/recordings/stop", { method: "POST", body: { sessionIds: ids, ...where } }); break;
      case "kick": {
        const message = await askKick(ids[0]);
        if (message === null) return;
        await api(`/sessions/${encodeURIComponent(ids[0])}/kick`, { method: "POST", body: { message, node: nodes[0] } });
        break;
      }
      case "ban": {
        const session = live.row(ids[0]);
        // Everyone online at that address, on every node (not only this page).
        const sharing = session?.ip
          ? (await api(`/sessions?${new URLSearchParams({ ip: session.ip, limit: 0 })}`)).total
          : 0;
        const made = await askBan(
          { title: ids[0], hasIdentity: Boolean(session?.identity), hasAddress: Boolean(session?.ip), sharing },
          (terms) => api("/bans", { method: "POST", body: { sessionId: ids[0], node: nodes[0], ...terms } }),
        );
        if (!made) return;
        if (made.missed?.length) alert(`Ban ${made.id} is stored, but: ${made.missed.map((m) => m.error).join("; ")}`);
        break;
      }
      case "release": await api(`/sessions/${encodeURIComponent(ids[0])}/release`, { method: "POST", body: { node: nodes[0] } }); break;
      case "lift": await api(`/bans/${button.dataset.id}/lift`, { method: "POST", body: {} }); break;
      case "play": return play(button.dataset.name, button.dataset.node);
    }
    await Promise.all([refreshSessions(), refreshTables(), queue.refresh()]);
  } catch (error) {
    alert(error.message);
  }
});

$("#watch-stop").addEventListener("click", () => stopWatching());
$("#watch-audio").addEventListener("change", (e) => {
  for (const i of [0, 1]) $(`#watch-video-${i}`).muted = !e.target.checked;
});

// The kick dialog: the message the person is shown; null when cancelled.
function askKick(sessionId) {
  const dialog = $("#kick-dialog");
  $("#kick-who").textContent = sessionId;
  $("#kick-form").reset();
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "kick" ? $("#kick-message").value.trim() : null),
      { once: true },
    );
    dialog.showModal();
  });
}

async function loop(fn, ms) {
  for (;;) {
    try {
      await fn();
    } catch (error) {
      console.warn(error);
      $("#summary").textContent = `error: ${error.message}`;
    }
    await new Promise((r) => setTimeout(r, ms));
  }
}

const queue = new Queue({ onchange: () => refreshTables().catch(() => {}) });

// Thumbnails reload in place; a card is rebuilt only when its person changes.
setInterval(() => live.reloadThumbnails(), THUMB_MS);
const events = new EventSource(`${API}/events`);
events.addEventListener("queue", () => queue.refresh().catch((e) => console.warn(e)));
events.addEventListener("sessions", () => live.refresh().catch((e) => console.warn(e)));
loop(() => queue.refresh(), QUEUE_MS);
loop(refreshSessions, POLL_MS);
loop(refreshTables, 5000);
