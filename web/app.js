// Roulette Relay in the browser: wires the first screen, the room and the server together.
//
// Phases of the room, as the status line shows them:
//   connecting    Start pressed, no answer from the server yet
//   waiting       queued; looking for a partner
//   matched       paired; the partner's media flows
//   left          the partner left (reason in `leftReason`); idle until Next/Start
//   stopped       the person pressed Stop; idle until Start/Next
//   reconnecting  the WebSocket dropped; retrying with back-off
//   closed        the server refused to talk to us any more

import { ChatPanel } from "./chat.js";
import { InterestInput } from "./interests.js";
import { LocalMedia } from "./media.js";
import * as text from "./messages.js";
import { Peer } from "./peer.js";
import { RecentList, categoryOf } from "./recent.js";
import { RemoteView } from "./remoteview.js";
import { Signalling, socketUrl } from "./signalling.js";

const $ = (id) => document.getElementById(id);

// Esc, then Esc again within this long, means Next.
const ESC_WINDOW_MS = 2500;
// How long a failed media connection may wait for the server's `media_lost` before
// the whole visit is restarted.
const MEDIA_FAILED_GRACE_MS = 10000;

const ui = {
  intro: $("intro"),
  startForm: $("start-form"),
  startButton: $("start-button"),
  startNote: $("start-note"),
  ageCheck: $("age-check"),
  room: $("room"),
  status: $("status"),
  statusText: $("status-text"),
  statusExtra: $("status-extra"),
  stopButton: $("stop-button"),
  nextButton: $("next-button"),
  nextLabel: $("next-label"),
  micButton: $("mic-button"),
  cameraButton: $("camera-button"),
  reportButton: $("report-button"),
  reportDialog: $("report-dialog"),
  reportForm: $("report-form"),
  reportDetails: $("report-details"),
  reportSkip: $("report-skip"),
  localVideo: $("local-video"),
  selfCameraOff: $("self-camera-off"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  toasts: $("toasts"),
};

const state = {
  phase: "connecting",
  wanted: false, // the person wants a partner: pressed Start or Next, not Stop
  leftReason: null,
  helloSeen: false,
  iceServers: [],
  peer: null,
  mediaFailures: 0,
  mediaFailedTimer: 0,
  mediaRetryTimer: 0,
  mediaStateSupported: true,
  mediaStateSent: false,
  sharedInterests: [],
  interests: [],
  maxInterests: 10,
  escArmedUntil: 0,
  escTimer: 0,
  countdownTimer: 0,
  reportTimer: 0,
  pairId: null, // the current pair's opaque id (from `matched`)
  reportTarget: null, // the pair the open report dialog is about
  phaseBeforeDrop: null,
};

const media = new LocalMedia();
const interests = new InterestInput({ box: $("interests"), input: $("interest-input") });
const remote = new RemoteView({
  tile: $("partner"),
  video: $("remote-video"),
  placeholderText: $("placeholder-text"),
  cameraOff: $("partner-camera-off"),
  micOff: $("partner-mic-off"),
});
const chat = new ChatPanel({
  log: $("chat-log"),
  typing: $("typing"),
  form: $("chat-form"),
  input: $("chat-input"),
  button: $("chat-send"),
  onsend: (t) => send({ type: "chat", text: t }),
  ontyping: (active) => state.phase === "matched" && send({ type: "typing", active }),
});
const recent = new RecentList({
  box: $("recent"),
  list: $("recent-list"),
  count: $("recent-count"),
  onreport: (pairId) => openReport(pairId),
  onblock: (pairId) => {
    if (send({ type: "block", pairId }) && pairId === state.pairId && state.phase === "matched") {
      // The server moves us on; say so as Next would.
      chat.system(text.chat.youSkipped, { strong: true });
      setPhase("waiting");
    }
  },
});
const signalling = new Signalling(socketUrl(), {
  message: onMessage,
  down: onSignallingDown,
});

function send(msg) {
  return signalling.send(msg);
}

// ---------- first screen ----------

ui.startForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!ui.ageCheck.checked) {
    ui.ageCheck.closest(".check").classList.add("invalid");
    showBanner(text.notes.ageRequired, "error");
    ui.ageCheck.focus();
    return;
  }
  const note = ui.startNote.textContent;
  ui.startButton.disabled = true;
  ui.startNote.textContent = text.notes.asking;
  hideBanner();
  try {
    await media.open();
  } catch (err) {
    console.warn("getUserMedia failed", err);
    showBanner(text.mediaErrorText(err), "error");
    return;
  } finally {
    ui.startButton.disabled = false;
    ui.startNote.textContent = note;
  }
  state.interests = interests.value();
  enterRoom();
});

ui.ageCheck.addEventListener("change", () => {
  ui.ageCheck.closest(".check").classList.remove("invalid");
  if (ui.ageCheck.checked && ui.banner.dataset.reason === "age") hideBanner();
});

function enterRoom() {
  ui.intro.hidden = true;
  ui.room.hidden = false;
  ui.localVideo.srcObject = media.stream;
  ui.localVideo.play().catch(() => {});
  media.onended = () => showBanner(text.connection.deviceEnded, "error");
  state.wanted = true;
  setPhase("connecting");
  signalling.open();
}

// ---------- server messages ----------

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      return onHello(msg);
    case "answer":
      state.peer?.accept(msg.sdp).catch((err) => {
        console.error("the server's answer was not accepted", err);
        showBanner(text.connection.mediaFailed, "error", "media");
      });
      return;
    case "waiting":
      if (state.wanted) setPhase("waiting");
      return;
    case "matched":
      return onMatched(msg);
    case "partner_left":
      return onPartnerLeft(msg.reason);
    case "stopped":
      if (!state.wanted) setPhase("stopped");
      return;
    case "chat":
      if (state.phase === "matched" && typeof msg.text === "string") chat.theirs(msg.text);
      return;
    case "typing":
      if (state.phase === "matched") chat.setTheirTyping(msg.active === true);
      return;
    case "media_state":
      if (state.phase === "matched") remote.setPartnerMedia(msg);
      return;
    case "reported":
      clearTimeout(state.reportTimer);
      recent.mark(msg.pairId, "reported");
      toast(text.notes.reportRecorded);
      return;
    case "blocked":
      recent.mark(msg.pairId, "blocked");
      toast("Blocked. You will not be matched with them again.");
      return;
    case "error":
      return onServerError(msg);
    default:
      // Unknown messages are ignored, as the protocol asks.
      return;
  }
}

function onHello(msg) {
  const reconnected = state.helloSeen;
  state.helloSeen = true;
  state.iceServers = Array.isArray(msg.iceServers) ? msg.iceServers : [];
  const limits = msg.limits ?? {};
  chat.setMaxChars(limits.maxChatChars);
  if (Number.isInteger(limits.maxInterests)) state.maxInterests = limits.maxInterests;
  recent.setWindow(msg.reportWindow);
  clearInterval(state.countdownTimer);
  if (ui.banner.dataset.reason === "connection") hideBanner();
  if (reconnected) toast(text.notes.reconnected);
  state.mediaFailures = 0;
  connectMedia();
  if (state.wanted) {
    sendStart();
  } else {
    setPhase(state.phaseBeforeDrop === "left" ? "left" : "stopped");
  }
}

function onMatched(msg) {
  if (!state.wanted) return;
  const shared = Array.isArray(msg.interests) ? msg.interests : [];
  state.sharedInterests = shared.filter((t) => typeof t === "string");
  state.pairId = typeof msg.pairId === "string" ? msg.pairId : null;
  recent.started(state.pairId, state.sharedInterests);
  chat.clear();
  chat.system(text.chat.matched, { strong: true });
  if (state.sharedInterests.length) chat.system(`${text.chat.shared}`, { tags: state.sharedInterests });
  remote.expectPartner(text.placeholder.matched);
  setPhase("matched");
  // A new partner does not know our camera or microphone is off.
  if (!media.cameraOn || !media.micOn) sendMediaState();
}

function onPartnerLeft(reason) {
  if (state.phase !== "matched") return;
  state.wanted = false;
  state.leftReason = reason;
  chat.system(text.partnerLeftText(reason), { strong: true });
  chat.system(text.chat.leftHint);
  setPhase("left");
}

function onServerError(msg) {
  const code = msg.code;
  if (code === "media_lost") return onMediaLost();
  if (code === "banned" || code === "kicked") {
    // The close that follows shows this instead of the generic text.
    state.moderatedText = msg.message;
    return;
  }
  // Races that are harmless: "start" while already queued, chat after the partner left.
  if (code === "bad_state" && msg.inReplyTo === "start") return;
  if (code === "unknown_type") {
    // A server older than this page; the only extra message we send is media_state.
    console.info("the server does not know a message this page sent", msg);
    if (state.mediaStateSent) state.mediaStateSupported = false;
    return;
  }
  const human = text.serverErrorText(msg);
  console.warn("server error", msg);
  if (msg.inReplyTo === "start" && state.wanted) {
    // Not queued after all: say so instead of "looking for someone" forever.
    state.wanted = false;
    setPhase("stopped");
    showBanner(human ?? text.serverErrorText({ code: "internal" }), "error");
    return;
  }
  if (human) toast(human);
}

// ---------- the media connection ----------

function connectMedia() {
  clearTimeout(state.mediaFailedTimer);
  clearTimeout(state.mediaRetryTimer);
  state.peer?.close();
  const peer = new Peer({
    iceServers: state.iceServers,
    stream: media.stream,
    send,
    ontrack: (track) => remote.addTrack(track),
    onstate: (s) => onMediaState(peer, s),
  });
  state.peer = peer;
  peer.offer().catch((err) => {
    console.error("could not make an offer", err);
    showBanner(text.connection.mediaFailed, "error", "media");
  });
}

function onMediaState(peer, s) {
  if (peer !== state.peer) return;
  if (s === "connected") {
    clearTimeout(state.mediaFailedTimer);
    state.mediaFailures = 0;
    if (ui.banner.dataset.reason === "media") hideBanner();
  } else if (s === "failed") {
    showBanner(text.connection.mediaFailed, "error", "media");
    // The server notices too and sends media_lost; if it does not, start the visit over.
    clearTimeout(state.mediaFailedTimer);
    state.mediaFailedTimer = setTimeout(restartVisit, MEDIA_FAILED_GRACE_MS);
  }
}

function onMediaLost() {
  state.mediaFailures += 1;
  const gaveUp = state.mediaFailures >= 3;
  showBanner(gaveUp ? text.connection.mediaGaveUp : text.connection.mediaFailed, "error", "media");
  if (state.phase === "matched") {
    chat.system(text.chat.connectionLost, { strong: true });
  }
  state.peer?.close();
  state.peer = null;
  if (state.phase === "matched" || state.phase === "waiting") setPhase("reconnecting");
  const delay = Math.min(1000 * 2 ** (state.mediaFailures - 1), 15000);
  clearTimeout(state.mediaRetryTimer);
  state.mediaRetryTimer = setTimeout(() => {
    if (!signalling.isOpen) return;
    connectMedia();
    if (state.wanted) sendStart();
  }, delay);
}

function restartVisit() {
  signalling.close();
  onSignallingDown({ everUp: true, retryInMs: 0, final: false });
  signalling.open();
}

// ---------- the WebSocket ----------

function onSignallingDown({ everUp, retryInMs, final }) {
  clearTimeout(state.mediaFailedTimer);
  clearTimeout(state.mediaRetryTimer);
  state.peer?.close();
  state.peer = null;
  if (state.phase === "matched") chat.system(text.chat.connectionLost, { strong: true });
  if (final) {
    setPhase("closed");
    showBanner(state.moderatedText ?? text.connection.kicked, "error", "connection");
    return;
  }
  if (state.phase !== "reconnecting" && state.phase !== "connecting") {
    state.phaseBeforeDrop = state.phase;
  }
  setPhase(state.helloSeen ? "reconnecting" : "connecting");
  countdown(retryInMs, (s) => {
    if (!navigator.onLine) return text.connection.offline;
    if (s <= 0) return text.connection.retryingNow;
    return everUp ? text.connection.lost(s) : text.connection.unreachable(s);
  });
}

function countdown(ms, format) {
  clearInterval(state.countdownTimer);
  const until = performance.now() + ms;
  const render = () => {
    const s = Math.max(0, Math.ceil((until - performance.now()) / 1000));
    showBanner(format(s), "warn", "connection");
    if (s <= 0) clearInterval(state.countdownTimer);
  };
  render();
  state.countdownTimer = setInterval(render, 1000);
}

// ---------- Start, Next, Stop ----------

function sendStart() {
  state.wanted = true;
  state.leftReason = null;
  const msg = { type: "start" };
  if (state.interests.length) msg.interests = state.interests.slice(0, state.maxInterests);
  if (send(msg)) setPhase("waiting");
}

function next() {
  disarmEsc();
  switch (state.phase) {
    case "matched":
      send({ type: "next" });
      chat.system(text.chat.youSkipped, { strong: true });
      setPhase("waiting");
      return;
    case "left":
    case "stopped":
      sendStart();
      return;
    case "connecting":
    case "reconnecting":
      state.wanted = true;
      return;
    default:
      return; // waiting already; closed cannot
  }
}

function stop() {
  if (!state.wanted) return;
  state.wanted = false;
  disarmEsc();
  send({ type: "stop" });
  if (state.phase === "matched") chat.system(text.chat.youStopped, { strong: true });
  setPhase("stopped");
}

ui.nextButton.addEventListener("click", next);
ui.stopButton.addEventListener("click", stop);

// Omegle's habit: Esc once arms Next, Esc again within a moment skips.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || ui.room.hidden || ui.reportDialog.open || event.repeat) return;
  event.preventDefault();
  if (state.phase === "left" || state.phase === "stopped") return next();
  if (state.phase !== "matched") return;
  if (performance.now() < state.escArmedUntil) return next();
  state.escArmedUntil = performance.now() + ESC_WINDOW_MS;
  ui.nextButton.classList.add("armed");
  ui.nextLabel.textContent = "Really?";
  ui.nextButton.title = text.notes.escAgain;
  clearTimeout(state.escTimer);
  state.escTimer = setTimeout(disarmEsc, ESC_WINDOW_MS);
});

function disarmEsc() {
  clearTimeout(state.escTimer);
  state.escArmedUntil = 0;
  ui.nextButton.classList.remove("armed");
  ui.nextButton.title = "";
  renderButtons();
}

// ---------- microphone, camera ----------

ui.micButton.addEventListener("click", () => {
  media.setMic(!media.micOn);
  renderDevices();
  sendMediaState();
});

ui.cameraButton.addEventListener("click", () => {
  media.setCamera(!media.cameraOn);
  renderDevices();
  sendMediaState();
});

function renderDevices() {
  const micOff = !media.micOn;
  const camOff = !media.cameraOn;
  ui.micButton.setAttribute("aria-pressed", String(micOff));
  ui.micButton.title = micOff ? "Unmute microphone" : "Mute microphone";
  ui.cameraButton.setAttribute("aria-pressed", String(camOff));
  ui.cameraButton.title = camOff ? "Turn camera on" : "Turn camera off";
  ui.selfCameraOff.hidden = !camOff;
}

// Proposed protocol message; the black frames of a disabled track say the same without it.
function sendMediaState() {
  if (state.phase !== "matched" || !state.mediaStateSupported) return;
  state.mediaStateSent = send({ type: "media_state", camera: media.cameraOn, mic: media.micOn });
}

// ---------- report ----------

ui.reportButton.addEventListener("click", () => {
  if (state.phase !== "matched") return;
  openReport(state.pairId);
});

// `pairId` is the current partner's or a recent one's (web/recent.js).
function openReport(pairId) {
  state.reportTarget = pairId;
  ui.reportForm.reset();
  ui.reportSkip.checked = true;
  // Skipping only makes sense for the partner on screen.
  ui.reportSkip.closest(".check").hidden = !(pairId === state.pairId && state.phase === "matched");
  ui.reportDialog.returnValue = "";
  ui.reportDialog.showModal();
}

ui.reportDialog.addEventListener("close", () => {
  if (ui.reportDialog.returnValue !== "send") return;
  const data = new FormData(ui.reportForm);
  const details = ui.reportDetails.value.trim();
  const choice = data.get("reason") ?? "unspecified";
  const reason = [choice, details].filter(Boolean).join(": ").slice(0, 500);
  const pairId = state.reportTarget;
  const current = pairId === state.pairId && state.phase === "matched";
  const report = { type: "report", reason, category: categoryOf(choice), moveOn: false };
  if (pairId) report.pairId = pairId;
  // The page moves on itself (Next), so the server is told not to.
  if ((current || (pairId && recent.find(pairId))) && send(report)) {
    // The server confirms with `reported`; a server without moderation does not.
    clearTimeout(state.reportTimer);
    state.reportTimer = setTimeout(() => toast(text.notes.reportSent), 3000);
    if (current && ui.reportSkip.checked) next();
  }
});

// ---------- rendering ----------

function setPhase(phase) {
  const before = state.phase;
  state.phase = phase;
  if (phase !== "matched" && before === "matched") {
    chat.enable(false);
    recent.ended(state.pairId);
  }
  renderStatus();
  renderButtons();
  const idle = phase === "left" || phase === "stopped" || phase === "closed";
  ui.room.dataset.phase = idle ? "idle" : "active";
  if (phase === "matched") {
    chat.enable(true);
  } else {
    remote.clear(placeholderFor(phase));
  }
}

function renderStatus() {
  let label;
  let extra = "";
  let dataState = state.phase;
  switch (state.phase) {
    case "matched":
      label = text.status.matched;
      if (state.sharedInterests.length) extra = ` · you both like ${state.sharedInterests.join(", ")}`;
      break;
    case "left":
      label = text.partnerLeftText(state.leftReason);
      break;
    case "closed":
      label = "Disconnected";
      dataState = "error";
      break;
    default:
      label = text.status[state.phase] ?? state.phase;
  }
  ui.status.dataset.state = dataState;
  ui.statusText.textContent = label;
  ui.statusExtra.textContent = extra;
  document.title =
    state.phase === "matched" ? "Talking to a stranger · Roulette Relay" : "Roulette Relay · random video chat";
}

function placeholderFor(phase) {
  return text.placeholder[phase] ?? "";
}

function renderButtons() {
  // Idle, the main button starts; active, it skips and Stop ends the chat.
  const idle = !state.wanted;
  ui.stopButton.disabled = idle || state.phase === "closed";
  if (!state.escArmedUntil) ui.nextLabel.textContent = idle ? "Start" : "Next";
  ui.nextButton.disabled = !(state.phase === "matched" || idle) || state.phase === "closed";
  ui.reportButton.disabled = state.phase !== "matched";
  renderDevices();
}

function showBanner(message, kind = "warn", reason = "") {
  ui.bannerText.textContent = message;
  ui.banner.dataset.kind = kind;
  ui.banner.dataset.reason = reason || (message === text.notes.ageRequired ? "age" : "");
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.banner.dataset.reason = "";
}

ui.bannerClose.addEventListener("click", hideBanner);

function toast(message) {
  const el = document.createElement("div");
  el.className = "toast";
  el.textContent = message;
  ui.toasts.append(el);
  setTimeout(() => el.remove(), 4000);
}

remote.onblocked = () => {
  toast("Click anywhere to hear the stranger.");
  document.addEventListener("click", () => remote.play(), { once: true });
};

window.addEventListener("pagehide", () => {
  signalling.close();
  state.peer?.close();
});

// Back/forward cache: the connections closed on pagehide do not come back by themselves.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});
