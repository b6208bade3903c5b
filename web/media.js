// The person's own camera and microphone.

const CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 }, facingMode: "user" },
};

export class LocalMedia {
  constructor() {
    this.stream = null;
    this.onended = null;
    // The person's choices (device picker, front/back switch), kept when the camera is
    // released after Stop and opened again.
    this.cameraId = null;
    this.micId = null;
    this.facing = "user";
  }

  constraints() {
    const video = { ...CONSTRAINTS.video, facingMode: this.facing };
    if (this.cameraId) {
      delete video.facingMode;
      video.deviceId = { exact: this.cameraId };
    }
    const audio = this.micId ? { ...CONSTRAINTS.audio, deviceId: { exact: this.micId } } : CONSTRAINTS.audio;
    return { audio, video };
  }

  get audioTrack() {
    return this.stream?.getAudioTracks()[0] ?? null;
  }

  get videoTrack() {
    return this.stream?.getVideoTracks()[0] ?? null;
  }

  get micOn() {
    return this.audioTrack?.enabled ?? false;
  }

  get cameraOn() {
    return this.videoTrack?.enabled ?? false;
  }

  // Ask for camera and microphone; throws an Error whose `name` messages.mediaErrorText understands.
  async open() {
    if (this.stream) return this.stream;
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      const err = new Error("getUserMedia needs a secure context");
      err.name = "InsecureContext";
      throw err;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(this.constraints());
    } catch (err) {
      if (err.name === "NotFoundError" || err.name === "DevicesNotFoundError") {
        err.missing = await missingDevice();
      }
      throw err;
    }
    for (const track of stream.getTracks()) this.watch(track);
    this.stream = stream;
    return stream;
  }

  watch(track) {
    // A track we stopped ourselves fires no "ended"; one the system took away does.
    track.addEventListener("ended", () => this.onended?.(track.kind));
  }

  // Cameras and microphones the browser lists (labels only after permission).
  async devices() {
    try {
      const all = await navigator.mediaDevices.enumerateDevices();
      return {
        cameras: all.filter((d) => d.kind === "videoinput" && d.deviceId),
        mics: all.filter((d) => d.kind === "audioinput" && d.deviceId),
      };
    } catch {
      return { cameras: [], mics: [] };
    }
  }

  get currentCameraId() {
    return this.videoTrack?.getSettings().deviceId ?? this.cameraId;
  }

  get currentMicId() {
    return this.audioTrack?.getSettings().deviceId ?? this.micId;
  }

  // Front/back on phones (facingMode); elsewhere the next camera in the list.
  async flip() {
    const { cameras } = await this.devices();
    const current = this.currentCameraId;
    const at = cameras.findIndex((c) => c.deviceId === current);
    const next = cameras[(at + 1) % cameras.length];
    this.facing = this.facing === "user" ? "environment" : "user";
    return this.useDevice("video", next?.deviceId ?? null);
  }

  // Switch one kind to the device `id`; returns the new track (the caller sends it).
  // The old track is stopped first: many phones cannot open two cameras at once.
  async useDevice(kind, id) {
    if (kind === "video") this.cameraId = id;
    else this.micId = id;
    if (!this.stream) return null;
    const old = kind === "video" ? this.videoTrack : this.audioTrack;
    const enabled = old?.enabled ?? true;
    old?.stop();
    const c = this.constraints();
    let fresh;
    try {
      fresh = await navigator.mediaDevices.getUserMedia(kind === "video" ? { video: c.video } : { audio: c.audio });
    } catch (err) {
      // The chosen device is gone: back to any device of this kind.
      if (kind === "video") this.cameraId = null;
      else this.micId = null;
      const again = this.constraints();
      fresh = await navigator.mediaDevices.getUserMedia(
        kind === "video" ? { video: again.video } : { audio: again.audio },
      ).catch(() => {
        throw err;
      });
    }
    const track = kind === "video" ? fresh.getVideoTracks()[0] : fresh.getAudioTracks()[0];
    track.enabled = enabled;
    if (old) this.stream.removeTrack(old);
    this.stream.addTrack(track);
    this.watch(track);
    return track;
  }

  // A disabled audio track sends silence; a disabled video track sends black frames, so
  // the partner sees a dark picture rather than the last frame frozen.
  setMic(on) {
    if (this.audioTrack) this.audioTrack.enabled = on;
  }

  setCamera(on) {
    if (this.videoTrack) this.videoTrack.enabled = on;
  }

  close() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }
}

// After NotFoundError: say which of the two is missing, if the browser lets us see.
async function missingDevice() {
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const hasCamera = devices.some((d) => d.kind === "videoinput");
    const hasMic = devices.some((d) => d.kind === "audioinput");
    if (!hasCamera && !hasMic) return "camera or microphone";
    if (!hasCamera) return "camera";
    if (!hasMic) return "microphone";
  } catch {
    // fall through to the generic wording
  }
  return "camera or microphone";
}
