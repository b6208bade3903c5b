// The partner's tile: their video and sound, and what to show when there is no picture.

import { room as words } from "./messages.js";

const SAMPLE_MS = 500;
// A frame this dark everywhere is a camera turned off (a disabled track sends black frames).
const DARK_LEVEL = 18;
const DARK_SAMPLES = 3;
const STALL_MS = 3500;

export class RemoteView {
  constructor({ tile, video, placeholderText, cameraOff, micOff }) {
    this.tile = tile;
    this.video = video;
    this.placeholderText = placeholderText;
    this.cameraOff = cameraOff;
    this.micOff = micOff;
    // One stream for the whole visit: partner changes only change what flows into its tracks.
    // Attached on the first track: an empty stream would hold back the page's load event.
    this.stream = new MediaStream();
    this.frames = 0;
    this.lastFrameAt = 0;
    this.framesAtMatch = 0;
    this.expecting = false;
    this.darkSamples = 0;
    this.cameraHint = null; // true/false from the partner's media_state, null when unknown
    this.held = false; // the server holds their video back for a moderator (partner_hidden)
    this.canvas = document.createElement("canvas");
    this.canvas.width = 24;
    this.canvas.height = 18;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.onblocked = null;
    this.countFrames();
    setInterval(() => this.sample(), SAMPLE_MS);
  }

  addTrack(track) {
    for (const old of this.stream.getTracks()) {
      if (old.kind === track.kind) this.stream.removeTrack(old);
    }
    this.stream.addTrack(track);
    if (this.video.srcObject !== this.stream) this.video.srcObject = this.stream;
    this.play();
  }

  play() {
    this.video.play().catch((err) => {
      // Autoplay with sound needs a gesture; Start is one, so this is rare.
      if (err.name === "NotAllowedError") this.onblocked?.();
    });
  }

  // A new partner was matched: show their picture from the first frame that arrives.
  expectPartner(text) {
    this.expecting = true;
    this.held = false;
    this.framesAtMatch = this.frames;
    this.cameraHint = null;
    this.darkSamples = 0;
    this.setCameraOff(false);
    this.setMicOff(false);
    this.setVideo("none", text);
    this.play();
  }

  // No partner: hide the last picture and say why instead.
  clear(text) {
    this.expecting = false;
    this.held = false;
    this.cameraHint = null;
    this.setCameraOff(false);
    this.setMicOff(false);
    this.setVideo("none", text);
  }

  setPlaceholder(text) {
    this.placeholderText.textContent = text;
  }

  // The partner's own word about their devices (proposed `media_state` message).
  setPartnerMedia({ camera, mic }) {
    if (typeof camera === "boolean") {
      this.cameraHint = camera;
      this.setCameraOff(!camera);
    }
    if (typeof mic === "boolean") this.setMicOff(!mic);
  }

  // partner_hidden / partner_shown: cover their picture, whatever frame was last shown.
  setHeld(held, text) {
    this.held = held;
    this.framesAtMatch = this.frames;
    this.setCameraOff(false);
    this.setVideo(held ? "held" : "none", text);
  }

  setVideo(state, text) {
    this.tile.dataset.video = state;
    if (text) this.placeholderText.textContent = text;
  }

  setCameraOff(off) {
    this.cameraOff.hidden = !off;
  }

  setMicOff(off) {
    this.micOff.hidden = !off;
  }

  countFrames() {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) {
      this.video.addEventListener("timeupdate", () => this.onFrame());
      return;
    }
    const tick = () => {
      this.onFrame();
      this.video.requestVideoFrameCallback(tick);
    };
    this.video.requestVideoFrameCallback(tick);
  }

  onFrame() {
    this.frames += 1;
    this.lastFrameAt = performance.now();
    // Two frames, so that a frame of the previous partner still in flight does not count.
    if (this.expecting && !this.held && this.frames - this.framesAtMatch >= 2) {
      this.setVideo("live", null);
    }
  }

  sample() {
    if (!this.expecting || this.held) return;
    const live = this.tile.dataset.video === "live";
    const stalled = performance.now() - this.lastFrameAt > STALL_MS;
    if (live && stalled) {
      this.framesAtMatch = this.frames;
      this.setVideo("none", words.waitingVideo);
      return;
    }
    if (!live || this.cameraHint !== null || this.video.videoWidth === 0) return;
    this.darkSamples = this.isDark() ? this.darkSamples + 1 : 0;
    this.setCameraOff(this.darkSamples >= DARK_SAMPLES);
  }

  isDark() {
    const { width, height } = this.canvas;
    try {
      this.ctx.drawImage(this.video, 0, 0, width, height);
      const data = this.ctx.getImageData(0, 0, width, height).data;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.max(data[i], data[i + 1], data[i + 2]) > DARK_LEVEL) return false;
      }
      return true;
    } catch {
      return false;
    }
  }
}
