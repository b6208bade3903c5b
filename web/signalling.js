// The WebSocket to the relay server: JSON messages both ways, reconnecting with back-off.

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
// A close code the server uses for a client it will not talk to any more: do not reconnect.
const CLOSE_FLOODING = 4008;
// A moderator ended this visit (kick or ban): reconnecting would be refused too.
const CLOSE_MODERATED = 4003;
// One node of a cluster is restarting (draining): another node answers at once.
const CLOSE_SERVICE_RESTART = 1012;
// Another connection resumed this session (this page's token was used elsewhere).
const CLOSE_REPLACED = 4009;

export function socketUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws?clientId=${encodeURIComponent(clientId())}`;
}

// A random id kept in this browser, so a ban outlives one visit (docs/protocol.md).
export function clientId() {
  const key = "relay.clientId";
  try {
    let id = localStorage.getItem(key);
    if (!id || !/^[A-Za-z0-9_-]{8,64}$/.test(id)) {
      const bytes = crypto.getRandomValues(new Uint8Array(18));
      id = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
      localStorage.setItem(key, id);
    }
    return id;
  } catch {
    return "";
  }
}

/**
 * One logical connection to the server that survives drops.
 *
 * handlers.message(msg)  every JSON object received
 * handlers.up()          the socket opened
 * handlers.down(info)    the socket closed or never opened; info = {everUp, retryInMs, final,
 *                        resumable}: resumable when the next socket will try to take the
 *                        session over (docs/protocol.md, "Resume"), so media and pair may live on
 *
 * Resume is done here: the token from `hello`/`resumed` is sent as the first message of the
 * next socket. That socket's own `hello` is held back: the page sees `resumed` (the session
 * goes on), or, when the server refuses the token, that `hello` (a new visit starts).
 */
export class Signalling {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.everUp = false;
    this.closed = true;
    this.retryTimer = 0;
    this.onOnline = () => this.retryNow();
    this.resumeToken = null;
    this.resuming = false;
    this.heldHello = null;
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  open() {
    if (!this.closed) return;
    this.closed = false;
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  // Leaving on purpose: the server ends the session at once (close 1000), nothing to resume.
  close() {
    this.closed = true;
    this.resumeToken = null;
    this.resuming = false;
    clearTimeout(this.retryTimer);
    window.removeEventListener("online", this.onOnline);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      ws.close(1000);
    }
  }

  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  // The network changed (a phone moved to another network): the socket may be dead without
  // knowing it. Close it (4000 is not a goodbye: the server holds the session) and resume at once.
  cycle() {
    if (this.closed || !this.ws) return;
    this.ws.close(4000, "network changed");
  }

  // Skip the rest of the back-off wait (the network came back, or the person asked).
  retryNow() {
    if (this.closed || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  connect() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error("WebSocket could not be created", err);
      this.scheduleRetry(1006);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.everUp = true;
      this.resuming = this.resumeToken !== null;
      this.heldHello = null;
      if (this.resuming) ws.send(JSON.stringify({ type: "resume", token: this.resumeToken }));
      this.handlers.up?.();
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn("ignored a frame that is not JSON", event.data);
        return;
      }
      if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") return;
      // A working exchange, not just an open socket, resets the back-off.
      this.attempt = 0;
      if (this.resuming) {
        if (msg.type === "hello") {
          this.heldHello = msg;
          return;
        }
        if (msg.type === "error" && msg.inReplyTo === "resume") {
          // Ended, expired or on another server: this socket's own visit starts.
          this.resuming = false;
          msg = this.heldHello;
          this.heldHello = null;
          if (!msg) return;
        } else if (msg.type === "resumed") {
          this.resuming = false;
        }
      }
      if ((msg.type === "hello" || msg.type === "resumed") && typeof msg.resumeToken === "string") {
        this.resumeToken = msg.resumeToken;
      }
      this.handlers.message(msg);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.scheduleRetry(event.code);
    };
    // Errors are always followed by close; the close handler does the work.
    ws.onerror = () => {};
  }

  scheduleRetry(code) {
    if (this.closed) return;
    if (code === CLOSE_FLOODING || code === CLOSE_MODERATED || code === CLOSE_REPLACED) {
      this.closed = true;
      this.resumeToken = null;
      this.handlers.down({ everUp: this.everUp, retryInMs: null, final: true, code });
      return;
    }
    const resumable = this.resumeToken !== null;
    if (code === CLOSE_SERVICE_RESTART) {
      // Soon, but spread over a second so a drained node's visitors do not arrive at once.
      const retryInMs = Math.round(200 + Math.random() * 800);
      this.retryTimer = setTimeout(() => this.connect(), retryInMs);
      this.handlers.down({ everUp: this.everUp, retryInMs, final: false, code, resumable });
      return;
    }
    // A session held for a resume waits only seconds: the first retry goes at once.
    const base = resumable && this.attempt === 0 ? 0 : BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    // Jitter, so that a restarted server is not hit by every browser in the same second.
    const retryInMs = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), retryInMs);
    this.handlers.down({ everUp: this.everUp, retryInMs, final: false, code, resumable });
  }
}
