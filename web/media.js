// The person's own camera and microphone.

const CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 }, facingMode: "user" },
};

export class LocalMedia {
  constructor() {
    this.stream = null;
    this.onended = null;
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
      stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
    } catch (err) {
      if (err.name === "NotFoundError" || err.name === "DevicesNotFoundError") {
        err.missing = await missingDevice();
      }
      throw err;
    }
    for (const track of stream.getTracks()) {
      track.addEventListener("ended", () => this.onended?.(track.kind));
    }
    this.stream = stream;
    return stream;
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
