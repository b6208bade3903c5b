// The one WebRTC connection from this browser to the relay server.
//
// It is negotiated once per server visit: the server's answer carries a send track for
// audio and one for video, and only what the server forwards into them changes when the
// partner changes. So this object never renegotiates; a broken one is replaced whole.

export class Peer {
  /**
   * @param {object} opts
   * @param {RTCIceServer[]} opts.iceServers  from the server's hello
   * @param {MediaStream|null} opts.stream    the person's camera and microphone (null: released)
   * @param {(msg: object) => void} opts.send signalling
   * @param {(track: MediaStreamTrack) => void} opts.ontrack
   * @param {(state: RTCPeerConnectionState) => void} opts.onstate
   */
  constructor({ iceServers, stream, send, ontrack, onstate }) {
    this.send = send;
    this.closed = false;
    this.offerSent = false;
    this.pendingCandidates = [];
    this.pc = new RTCPeerConnection({ iceServers: iceServers ?? [], bundlePolicy: "max-bundle" });
    // One audio and one video transceiver, camera or not: a released camera (after Stop)
    // comes back through replaceTrack without renegotiating.
    this.transceivers = {};
    for (const kind of ["audio", "video"]) {
      const track = stream?.getTracks().find((t) => t.kind === kind) ?? null;
      this.transceivers[kind] = this.pc.addTransceiver(track ?? kind, {
        direction: "sendrecv",
        streams: stream ? [stream] : [],
      });
    }
    this.pc.ontrack = (event) => ontrack(event.track);
    this.pc.onconnectionstatechange = () => {
      if (!this.closed) onstate(this.pc.connectionState);
    };
    this.pc.onicecandidate = (event) => {
      const c = event.candidate;
      // null marks the end of gathering; the protocol spells that as an empty candidate.
      const msg = c
        ? { type: "candidate", candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex }
        : { type: "candidate", candidate: "" };
      if (this.offerSent) this.send(msg);
      else this.pendingCandidates.push(msg);
    };
  }

  get state() {
    return this.pc.connectionState;
  }

  async offer() {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    if (this.closed) return;
    this.send({ type: "offer", sdp: this.pc.localDescription.sdp });
    this.offerSent = true;
    for (const msg of this.pendingCandidates.splice(0)) this.send(msg);
  }

  async accept(sdp) {
    if (this.closed) return;
    await this.pc.setRemoteDescription({ type: "answer", sdp });
  }

  // Send `track` (or nothing) instead of what this kind sends now; no renegotiation.
  async replaceTrack(kind, track) {
    if (this.closed) return;
    await this.transceivers[kind].sender.replaceTrack(track);
  }

  close() {
    this.closed = true;
    this.pc.ontrack = this.pc.onicecandidate = this.pc.onconnectionstatechange = null;
    this.pc.close();
  }
}
