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
import { languageSwitcher, translatePage } from "./i18n.js";
import { registerServiceWorker } from "./install.js";
import { InterestInput } from "./interests.js";
import { LocalMedia } from "./media.js";
import * as text from "./messages.js";
import { Peer } from "./peer.js";
import { RecentList, categoryOf } from "./recent.js";
import { RemoteView } from "./remoteview.js";
import { Signalling, clientId, socketUrl } from "./signalling.js";
import { touchOnly, useTouchWording } from "./touch.js";

const $ = (id) => document.getElementById(id);

// Before any component reads a text from the page.
translatePage();

// Esc, then Esc again within this long, means Next.
const ESC_WINDOW_MS = 2500;
// After the partner leaves, auto search waits this long: time to read why they left.
const AUTO_SEARCH_DELAY_MS = 1500;
const AUTO_SEARCH_KEY = "relay.autoSearch";
// How long a failed media connection may wait for the server's `media_lost` before
// the whole visit is restarted.
const MEDIA_FAILED_GRACE_MS = 10000;
// ICE "disconnected" this long (a network change) means: make a new connection now. The
// server answers its offer with a new connection that keeps the partner (aiortc, on the
// server, has no ICE restart, so pc.restartIce() is not used).
const MEDIA_DISCONNECTED_MS = 2000;

const ui = {
  intro: $("intro"),
  startForm: $("start-form"),
  startButton: $("start-button"),
  textButton: $("text-button"),
  textSettingsButton: $("text-settings-button"),
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
  self: $("self"),
  selfCameraOff: $("self-camera-off"),
  flipButton: $("flip-button"),
  devicesButton: $("devices-button"),
  devicesDialog: $("devices-dialog"),
  cameraSelect: $("camera-select"),
  autoSearch: $("auto-search"),
  textMode: $("text-mode"),
  micSelect: $("mic-select"),
  interestHint: $("interest-hint"),
  chatInput: $("chat-input"),
  announcer: $("announcer"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  toasts: $("toasts"),
};

const state = {
  // "video", or "text": chat only, no camera and no media connection (start {mode: "text"}).
  mode: "video",
  phase: "connecting",
  wanted: false, // the person wants a partner: pressed Start or Next, not Stop
  leftReason: null,
  helloSeen: false,
  iceServers: [],
  peer: null,
  // The connection a new one replaces, kept until the new one is up (make before break).
  oldPeer: null,
  mediaDisconnectedTimer: 0,
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
  autoSearch: loadAutoSearch(),
  autoSearchTimer: 0,
  online: null, // people online, rounded, when the server tells (--show-online)
  networkChanged: false,
};

const media = new LocalMedia();
const interests = new InterestInput({ box: $("interests"), input: $("interest-input") });
// The same interests, changed in the room's settings while waiting or paired.
const roomInterests = new InterestInput({ box: $("room-interests"), input: $("room-interest-input") });
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

languageSwitcher($("lang-select"));
if (touchOnly) useTouchWording(ui, text.notes.interestHintTouch);
registerServiceWorker();
checkStanding();
suggestTextIfNoCamera();

// A banned visitor hears it before the age check and the camera prompt (GET /api/standing).
async function checkStanding() {
  let standing;
  try {
    const response = await fetch(`/api/standing?clientId=${encodeURIComponent(clientId())}`, { cache: "no-store" });
    if (!response.ok) return; // an older server: /ws says it instead
    standing = await response.json();
  } catch {
    return; // offline: the first screen still works, /ws tells later
  }
  if (standing?.banned !== true || !ui.room.hidden) return;
  state.moderatedText = text.serverErrorText({ ...standing, code: "banned" });
  showBanner(state.moderatedText, "error", "banned");
  ui.startButton.disabled = true;
  ui.textButton.disabled = true;
  ui.ageCheck.disabled = true;
  ui.startNote.textContent = text.notes.banned;
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
  state.interests = interests.value();
  if (event.submitter === ui.textButton) {
    // No camera prompt at all: text-only people are matched with each other.
    hideBanner();
    enterRoom("text");
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
    // Not a dead end: the text-only way in is offered, one press away.
    showBanner(`${text.mediaErrorText(err)} ${text.notes.textInstead}`, "error");
    suggestText({ focus: true });
    return;
  } finally {
    ui.startButton.disabled = false;
    ui.startNote.textContent = note;
  }
  enterRoom("video");
});

// Without a camera (none listed, or its permission denied for this site) text-only is
// the way in: it becomes the main button. Start stays, for a camera plugged in later.
async function suggestTextIfNoCamera() {
  let denied = false;
  let noCamera = true;
  try {
    denied = (await navigator.permissions?.query({ name: "camera" }))?.state === "denied";
  } catch {
    // Firefox and older browsers cannot be asked about the camera
  }
  try {
    noCamera = !(await navigator.mediaDevices.enumerateDevices()).some((d) => d.kind === "videoinput");
  } catch {
    // no mediaDevices (an insecure page): no camera either
  }
  if ((denied || noCamera) && !ui.startButton.disabled && ui.room.hidden) {
    ui.startNote.textContent = text.notes.noCamera;
    suggestText({ focus: false });
  }
}

function suggestText({ focus }) {
  ui.startButton.classList.remove("btn-primary");
  ui.textButton.classList.add("btn-primary");
  if (focus) ui.textButton.focus();
}

ui.ageCheck.addEventListener("change", () => {
  ui.ageCheck.closest(".check").classList.remove("invalid");
  if (ui.ageCheck.checked && ui.banner.dataset.reason === "age") hideBanner();
});

function enterRoom(mode) {
  setMode(mode);
  ui.intro.hidden = true;
  ui.room.hidden = false;
  if (mode === "video") {
    showSelf();
    media.onended = () => showBanner(text.connection.deviceEnded, "error");
    listDevices();
  }
  state.wanted = true;
  setPhase("connecting");
  signalling.open();
}

// The room without video tiles, camera or microphone in text mode (style.css).
function setMode(mode) {
  state.mode = mode;
  document.body.dataset.mode = mode;
  ui.room.setAttribute("aria-label", mode === "text" ? text.room.labelText : text.room.label);
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
      setOnline(msg.online);
      if (state.wanted) setPhase("waiting");
      return;
    case "matched":
      return onMatched(msg);
    case "resumed":
      return onResumed(msg);
    case "partner_reconnecting":
      if (state.phase === "matched") chat.system(text.chat.partnerReconnecting);
      return;
    case "partner_back":
      if (state.phase === "matched") chat.system(text.chat.partnerBack);
      return;
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
    case "partner_hidden":
      // The server stopped forwarding their video (docs/protocol.md): cover the last frame.
      if (state.phase === "matched") remote.setHeld(true, text.room.partnerHidden);
      return;
    case "partner_shown":
      if (state.phase === "matched") remote.setHeld(false, text.room.waitingVideo);
      return;
    case "reported":
      clearTimeout(state.reportTimer);
      recent.mark(msg.pairId, "reported");
      toast(text.notes.reportRecorded);
      return;
    case "blocked":
      recent.mark(msg.pairId, "blocked");
      toast(text.notes.blocked);
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
  setOnline(msg.online);
  const limits = msg.limits ?? {};
  chat.setMaxChars(limits.maxChatChars);
  if (Number.isInteger(limits.maxInterests)) state.maxInterests = limits.maxInterests;
  recent.setWindow(msg.reportWindow);
  clearInterval(state.countdownTimer);
  if (ui.banner.dataset.reason === "connection") hideBanner();
  if (reconnected) toast(text.notes.reconnected);
  state.mediaFailures = 0;
  if (state.mode === "video") connectMedia();
  if (state.wanted) {
    sendStart();
  } else {
    setPhase(state.phaseBeforeDrop === "left" ? "left" : "stopped");
  }
}

// The socket came back and took the session over: same partner, same media if it lived.
function onResumed(msg) {
  if (Array.isArray(msg.iceServers)) state.iceServers = msg.iceServers;
  clearInterval(state.countdownTimer);
  if (ui.banner.dataset.reason === "connection") hideBanner();
  toast(text.notes.reconnected);
  const before = state.phaseBeforeDrop;
  if (msg.state === "paired") {
    // The same partner: their picture shows again from the next frame.
    remote.expectPartner(text.placeholder.matched);
    setPhase("matched");
  } else if (msg.state === "waiting") {
    setPhase("waiting");
  } else if (before === "matched") {
    // The pair ended while we were away.
    setPhase("matched");
    onPartnerLeft("disconnect");
  } else if (state.wanted) {
    sendStart();
  } else {
    setPhase(before === "left" ? "left" : "stopped");
  }
  // After a network change the old media path is dead even if the browser has not noticed.
  const mediaDead = state.networkChanged || !msg.media || state.peer?.state !== "connected";
  if (state.mode === "video" && mediaDead) connectMedia();
  state.networkChanged = false;
}

// A phone moved to another network (Network Information API, where the browser has it): the
// socket and the media path are both suspect, so both are renewed, keeping the partner.
function onNetworkChange() {
  if (!state.helloSeen || state.phase === "closed") return;
  state.networkChanged = true;
  signalling.cycle();
}
navigator.connection?.addEventListener?.("change", onNetworkChange);

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
  // Ready to type; not on phones, where the keyboard would cover the partner.
  if (!touchOnly && !ui.reportDialog.open && !ui.devicesDialog.open) ui.chatInput.focus({ preventScroll: true });
  // A new partner does not know our camera or microphone is off.
  if (!media.cameraOn || !media.micOn) sendMediaState();
}

function onPartnerLeft(reason) {
  if (state.phase !== "matched") return;
  state.leftReason = reason;
  chat.system(text.partnerLeftText(reason), { strong: true });
  // Like the apps: look for someone new by itself (a setting, on by default). The
  // person still wants a partner, so Stop stays enabled and cancels the search.
  state.wanted = state.autoSearch;
  chat.system(state.autoSearch ? text.chat.autoSearch : text.chat.leftHint);
  setPhase("left");
  if (state.autoSearch) {
    remote.clear(text.placeholder.autoSearch);
    clearTimeout(state.autoSearchTimer);
    state.autoSearchTimer = setTimeout(() => {
      if (state.phase === "left" && state.wanted) sendStart();
    }, AUTO_SEARCH_DELAY_MS);
  }
}

function loadAutoSearch() {
  try {
    return localStorage.getItem(AUTO_SEARCH_KEY) !== "off";
  } catch {
    return true;
  }
}

ui.autoSearch.checked = state.autoSearch;
ui.autoSearch.addEventListener("change", () => {
  state.autoSearch = ui.autoSearch.checked;
  try {
    localStorage.setItem(AUTO_SEARCH_KEY, state.autoSearch ? "on" : "off");
  } catch {
    // this visit only
  }
});

function onServerError(msg) {
  const code = msg.code;
  if (code === "media_lost") return onMediaLost();
  if (code === "banned" || code === "kicked") {
    // The close that follows shows this instead of the generic text.
    state.moderatedText = text.serverErrorText(msg);
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
  clearTimeout(state.mediaDisconnectedTimer);
  // The old connection keeps carrying media until the new one is up (or fails).
  state.oldPeer?.close();
  state.oldPeer = state.peer;
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
  clearTimeout(state.mediaDisconnectedTimer);
  if (s === "disconnected" && signalling.isOpen) {
    state.mediaDisconnectedTimer = setTimeout(() => {
      if (peer === state.peer && peer.state !== "connected") connectMedia();
    }, MEDIA_DISCONNECTED_MS);
  }
  if (s === "connected" || s === "failed") {
    state.oldPeer?.close();
    state.oldPeer = null;
  }
  if (s === "connected") {
    clearTimeout(state.mediaFailedTimer);
    state.mediaFailures = 0;
    if (ui.banner.dataset.reason === "media") hideBanner();
  } else if (s === "failed") {
    showBanner(text.connection.mediaFailed, "error", "media");
    if (state.phase === "matched" && signalling.isOpen) {
      // The server holds the pair for its resume grace: a new connection keeps the partner.
      connectMedia();
      return;
    }
    // The server notices too and sends media_lost; if it does not, start the visit over.
    clearTimeout(state.mediaFailedTimer);
    state.mediaFailedTimer = setTimeout(restartVisit, MEDIA_FAILED_GRACE_MS);
  }
}

function onMediaLost() {
  if (state.phase === "matched" && signalling.isOpen) {
    // The server holds the pair for a while: a new connection now keeps the partner.
    showBanner(text.connection.mediaFailed, "error", "media");
    if (state.peer?.state !== "connecting" && state.peer?.state !== "new") connectMedia();
    return;
  }
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

function onSignallingDown({ everUp, retryInMs, final, resumable, code }) {
  clearTimeout(state.mediaFailedTimer);
  clearTimeout(state.mediaRetryTimer);
  if (!resumable) {
    // Nothing to resume: the next hello starts a new visit with a new connection.
    state.oldPeer?.close();
    state.oldPeer = null;
    state.peer?.close();
    state.peer = null;
  }
  if (state.phase === "matched") chat.system(text.chat.connectionLost, { strong: true });
  if (final) {
    releaseCamera();
    setPhase("closed");
    const why = code === 4009 ? text.connection.replaced : text.connection.kicked;
    showBanner(state.moderatedText ?? why, "error", "connection");
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
  clearTimeout(state.autoSearchTimer);
  state.wanted = true;
  state.leftReason = null;
  const msg = { type: "start" };
  if (state.mode === "text") msg.mode = "text";
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
      if (media.stream || state.mode === "text") sendStart();
      else reopenCamera().then((ok) => ok && sendStart());
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
  clearTimeout(state.autoSearchTimer);
  disarmEsc();
  send({ type: "stop" });
  if (state.phase === "matched") chat.system(text.chat.youStopped, { strong: true });
  releaseCamera();
  setPhase("stopped");
}

ui.nextButton.addEventListener("click", next);
ui.stopButton.addEventListener("click", stop);

// Omegle's habit: Esc once arms Next, Esc again within a moment skips.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || ui.room.hidden || ui.reportDialog.open || ui.devicesDialog.open || event.repeat) {
    return;
  }
  event.preventDefault();
  if (state.phase === "left" || state.phase === "stopped") return next();
  if (state.phase !== "matched") return;
  if (performance.now() < state.escArmedUntil) return next();
  state.escArmedUntil = performance.now() + ESC_WINDOW_MS;
  ui.nextButton.classList.add("armed");
  ui.nextLabel.textContent = text.room.really;
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
  // Named "Microphone" and "Camera": pressed means on.
  ui.micButton.setAttribute("aria-pressed", String(!micOff));
  ui.micButton.title = micOff ? text.room.unmute : text.room.mute;
  ui.cameraButton.setAttribute("aria-pressed", String(!camOff));
  ui.cameraButton.title = camOff ? text.room.cameraTurnOn : text.room.cameraTurnOff;
  ui.micButton.disabled = ui.cameraButton.disabled = !media.stream;
  ui.selfCameraOff.hidden = !camOff;
}

// ---------- the camera: released while idle, switched, picked ----------

function showSelf() {
  ui.localVideo.srcObject = media.stream;
  if (media.stream) ui.localVideo.play().catch(() => {});
  const facing = media.videoTrack?.getSettings().facingMode;
  ui.self.dataset.facing = facing === "environment" ? "environment" : "user";
  ui.selfCameraOff.querySelector("p").textContent = media.stream ? text.room.cameraOff : text.notes.cameraReleased;
  renderDevices();
}

// After Stop, a kick or a ban the camera light goes out; Start opens it again.
function releaseCamera() {
  media.close();
  state.peer?.replaceTrack("audio", null).catch(() => {});
  state.peer?.replaceTrack("video", null).catch(() => {});
  showSelf();
}

async function reopenCamera() {
  try {
    await media.open();
  } catch (err) {
    showBanner(text.mediaErrorText(err), "error");
    return false;
  }
  showSelf();
  await Promise.all([
    state.peer?.replaceTrack("audio", media.audioTrack),
    state.peer?.replaceTrack("video", media.videoTrack),
  ]).catch((err) => console.warn("could not send the camera again", err));
  return true;
}

async function listDevices() {
  const { cameras } = await media.devices();
  ui.flipButton.hidden = cameras.length < 2;
}

async function useDevice(kind, id) {
  try {
    const track = id === "flip" ? await media.flip() : await media.useDevice(kind, id);
    if (track) await state.peer?.replaceTrack(kind, track);
  } catch (err) {
    showBanner(text.mediaErrorText(err), "error");
  }
  showSelf();
  sendMediaState();
}

ui.flipButton.addEventListener("click", () => useDevice("video", "flip"));

ui.textSettingsButton.addEventListener("click", openSettings);
ui.devicesButton.addEventListener("click", openSettings);

async function openSettings() {
  const { cameras, mics } = await media.devices();
  fillSelect(ui.cameraSelect, cameras, media.currentCameraId, text.room.camera);
  fillSelect(ui.micSelect, mics, media.currentMicId, text.room.microphone);
  roomInterests.replace(state.interests);
  ui.textMode.checked = state.mode === "text";
  ui.devicesDialog.returnValue = "";
  ui.devicesDialog.showModal();
}

ui.devicesDialog.addEventListener("close", async () => {
  if (ui.devicesDialog.returnValue !== "use") return;
  const chosen = roomInterests.value().slice(0, state.maxInterests);
  if (chosen.join("\n") !== state.interests.join("\n")) {
    state.interests = chosen;
    send({ type: "interests", interests: chosen });
  }
  if (ui.textMode.checked !== (state.mode === "text")) {
    await switchMode(ui.textMode.checked ? "text" : "video");
    return;
  }
  if (state.mode === "text") return;
  if (ui.cameraSelect.value && ui.cameraSelect.value !== media.currentCameraId) {
    await useDevice("video", ui.cameraSelect.value);
  }
  if (ui.micSelect.value && ui.micSelect.value !== media.currentMicId) {
    await useDevice("audio", ui.micSelect.value);
  }
});

// Between searches, as the protocol has it: stop, then start in the other mode. Video
// needs the camera first; if it cannot be had, the banner says why and text stays.
async function switchMode(mode) {
  if (mode === "video" && !(await reopenCamera())) return;
  const searching = state.wanted;
  if (searching && send({ type: "stop" }) && state.phase === "matched") {
    chat.system(text.chat.youStopped, { strong: true });
  }
  setMode(mode);
  if (mode === "text") {
    releaseCamera();
    dropMedia();
  } else {
    showSelf();
    media.onended = () => showBanner(text.connection.deviceEnded, "error");
    listDevices();
    if (signalling.isOpen) connectMedia(); // an offer while idle: allowed in any mode
  }
  if (searching) sendStart();
  else renderButtons();
}

function dropMedia() {
  clearTimeout(state.mediaFailedTimer);
  clearTimeout(state.mediaRetryTimer);
  clearTimeout(state.mediaDisconnectedTimer);
  state.oldPeer?.close();
  state.oldPeer = null;
  state.peer?.close();
  state.peer = null;
}

function fillSelect(select, devices, current, fallback) {
  select.replaceChildren(
    ...devices.map((d, i) => {
      const option = new Option(d.label || `${fallback} ${i + 1}`, d.deviceId);
      option.selected = d.deviceId === current;
      return option;
    }),
  );
}

// Proposed protocol message; the black frames of a disabled track say the same without it.
function sendMediaState() {
  if (state.phase !== "matched" || !state.mediaStateSupported || state.mode === "text") return;
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
  renderOnline();
  const idle = phase === "left" || phase === "stopped" || phase === "closed";
  ui.room.dataset.phase = idle ? "idle" : "active";
  if (phase === "matched") {
    chat.enable(true);
  } else {
    remote.clear(placeholderFor(phase));
  }
}

function setOnline(n) {
  state.online = Number.isInteger(n) && n >= 0 ? n : null;
  renderOnline();
}

// "120 online" under the search text, while searching.
function renderOnline() {
  const el = $("online-count");
  const show = state.online !== null && (state.phase === "waiting" || state.phase === "connecting");
  el.hidden = !show;
  if (show) el.textContent = text.room.online(state.online);
}

function renderStatus() {
  let label;
  let extra = "";
  let dataState = state.phase;
  switch (state.phase) {
    case "matched":
      label = text.status.matched;
      if (state.sharedInterests.length) extra = text.room.bothLike(state.sharedInterests);
      break;
    case "left":
      label = text.partnerLeftText(state.leftReason);
      break;
    case "closed":
      label = text.room.disconnected;
      dataState = "error";
      break;
    default:
      label = text.status[state.phase] ?? state.phase;
  }
  ui.status.dataset.state = dataState;
  if (ui.statusText.textContent !== label) ui.announcer.textContent = label;
  ui.statusText.textContent = label;
  ui.statusExtra.textContent = extra;
  document.title =
    state.phase === "matched" ? text.room.titleMatched : text.room.title;
}

function placeholderFor(phase) {
  return text.placeholder[phase] ?? "";
}

function renderButtons() {
  // Idle, the main button starts; active, it skips and Stop ends the chat.
  const idle = !state.wanted;
  ui.stopButton.disabled = idle || state.phase === "closed";
  if (!state.escArmedUntil) ui.nextLabel.textContent = idle ? text.room.start : text.room.next;
  const canSkip = state.phase === "matched" || state.phase === "left";
  ui.nextButton.disabled = !(canSkip || idle) || state.phase === "closed";
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
  toast(text.room.clickToHear);
  document.addEventListener("click", () => remote.play(), { once: true });
};

window.addEventListener("pagehide", () => {
  signalling.close();
  state.oldPeer?.close();
  state.peer?.close();
});

// Back/forward cache: the connections closed on pagehide do not come back by themselves.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});
