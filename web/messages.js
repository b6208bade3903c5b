// Every sentence the page shows a person about state and failures, in one place.

export const status = {
  connecting: "Connecting…",
  waiting: "Looking for someone to talk to…",
  matched: "You're talking to a stranger",
  stopped: "You stopped. Press Start to meet someone new.",
  reconnecting: "Reconnecting…",
};

// `partner_left` reasons, as the status line and the chat log say them.
export const partnerLeft = {
  next: "Stranger left: they moved on to someone new.",
  stop: "Stranger left: they stopped chatting.",
  disconnect: "Stranger left: their connection was lost.",
};

export function partnerLeftText(reason) {
  return partnerLeft[reason] ?? "Stranger left.";
}

export const placeholder = {
  connecting: "Connecting to the server…",
  waiting: "Looking for someone to talk to…",
  matched: "Connecting video…",
  left: "Press Start to meet someone new.",
  stopped: "Press Start when you're ready to meet someone.",
  reconnecting: "Reconnecting…",
};

export const chat = {
  matched: "You're chatting with a stranger. Say hi!",
  shared: "You both like",
  leftHint: "Press Start (or Esc) to meet someone new.",
  youStopped: "You stopped chatting.",
  youSkipped: "You skipped to someone new.",
  connectionLost: "Your connection was interrupted.",
  partnerReconnecting: "The stranger's connection dropped. Waiting for them to come back…",
  partnerBack: "The stranger is back.",
};

export const notes = {
  escAgain: "Press Esc again to skip",
  reportSent: "Thanks. Your report was sent.",
  reportRecorded: "Thanks. Your report was recorded and will be reviewed.",
  reconnected: "Reconnected.",
  ageRequired: "Please confirm you are 18 or older to continue.",
  asking: "Waiting for camera permission…",
};

// Why getUserMedia failed, for a person who has to fix it.
export function mediaErrorText(err) {
  const name = err?.name ?? "";
  if (name === "InsecureContext") {
    return "Your browser only allows the camera on a secure (https://) page. Open Roulette Relay over https.";
  }
  if (name === "NotAllowedError" || name === "PermissionDeniedError" || name === "SecurityError") {
    return (
      "Camera and microphone access is blocked. Allow them for this site " +
      "(the camera icon in the address bar), then press Start again."
    );
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    const what = err.missing ?? "camera or microphone";
    return `No ${what} was found. Plug one in (or enable it in your system settings), then press Start again.`;
  }
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
    return "Your camera or microphone is busy. Close other apps or tabs that use it, then press Start again.";
  }
  return `Your camera or microphone could not be started (${name || "unknown error"}). Press Start to try again.`;
}

export const connection = {
  unreachable: (seconds) => `Can't reach the Roulette Relay server. Trying again in ${seconds} s…`,
  lost: (seconds) => `Lost the connection to the server. Reconnecting in ${seconds} s…`,
  retryingNow: "Reconnecting to the server…",
  offline: "You're offline. We'll reconnect as soon as your network is back.",
  kicked: "The server closed the connection because too many messages were sent. Reload the page to continue.",
  replaced: "This chat continued in another window or tab. Reload the page to start a new one here.",
  mediaFailed:
    "The video connection to the server failed. Reconnecting… If this keeps happening, your network may block video calls (UDP).",
  mediaGaveUp:
    "A video connection could not be set up. Your network may block video calls (UDP); try another network.",
  deviceEnded: "Your camera or microphone stopped working (was it unplugged?). Reload the page to start it again.",
};

// Human text for an `error` from the server; null means "not worth telling the person".
export function serverErrorText(msg) {
  switch (msg.code) {
    case "not_paired":
      return null; // the partner left while a chat line was on its way
    case "rate_limited":
      return "You're sending messages too fast. Slow down a little.";
    case "bad_field":
      if (msg.field === "text") return "That message is too long to send.";
      if (msg.field === "interests") return "One of your interests is too long or there are too many.";
      return `The server did not accept that (${msg.message ?? msg.code}).`;
    case "internal":
      return "Something went wrong on the server. Please try again.";
    case "too_large":
      return "That message is too large to send.";
    case "too_many_sessions":
    case "too_many_new_sessions":
      // The close (4029) that follows makes the page retry with back-off.
      return "Too many chats are open from your network right now. Trying again shortly.";
    case "too_many_peers":
      return "Too many video connections are open from your network. Close another chat tab and try again.";
    default:
      return msg.message ? `Server: ${msg.message}` : `The server reported an error (${msg.code}).`;
  }
}
