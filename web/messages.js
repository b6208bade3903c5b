// Every sentence the page shows a person about state and failures, in one place.
// The texts themselves are in locales/ (i18n.js picks the language).

import { formatNumber, formatTime, t } from "./i18n.js";
import { touchOnly } from "./touch.js";

export const status = {
  connecting: t("status.connecting"),
  waiting: t("status.waiting"),
  matched: t("status.matched"),
  stopped: t("status.stopped"),
  reconnecting: t("status.reconnecting"),
};

// `partner_left` reasons, as the status line and the chat log say them.
export const partnerLeft = {
  next: t("left.next"),
  stop: t("left.stop"),
  disconnect: t("left.disconnect"),
};

export function partnerLeftText(reason) {
  return partnerLeft[reason] ?? t("left.other");
}

export const placeholder = {
  connecting: t("placeholder.connecting"),
  waiting: t("placeholder.waiting"),
  matched: t("placeholder.matched"),
  left: t("placeholder.left"),
  stopped: t("placeholder.stopped"),
  reconnecting: t("placeholder.reconnecting"),
  autoSearch: t("placeholder.autoSearch"),
};

export const chat = {
  matched: t("chat.matched"),
  shared: t("chat.shared"),
  leftHint: touchOnly ? t("chat.leftHintTouch") : t("chat.leftHint"),
  autoSearch: t("chat.autoSearch"),
  youStopped: t("chat.youStopped"),
  youSkipped: t("chat.youSkipped"),
  connectionLost: t("chat.connectionLost"),
  you: t("chat.you"),
  stranger: t("chat.stranger"),
  partnerReconnecting: t("chat.partnerReconnecting"),
  partnerBack: t("chat.partnerBack"),
};

export const notes = {
  escAgain: t("notes.escAgain"),
  reportSent: t("notes.reportSent"),
  reportRecorded: t("notes.reportRecorded"),
  blocked: t("notes.blocked"),
  reconnected: t("notes.reconnected"),
  ageRequired: t("notes.ageRequired"),
  asking: t("notes.asking"),
  interestHintTouch: t("intro.interestHintTouch"),
  cameraReleased: t("room.cameraReleased"),
  banned: t("notes.banned"),
  textInstead: t("notes.textInstead"),
  noCamera: t("notes.noCamera"),
};

// Words of the room that change with its state.
export const room = {
  start: t("intro.start"),
  label: t("room.label"),
  labelText: t("room.labelText"),
  next: t("room.next"),
  really: t("room.really"),
  disconnected: t("room.disconnected"),
  bothLike: (tags) => t("room.bothLike", { tags: tags.join(", ") }),
  mute: t("room.mute"),
  unmute: t("room.unmute"),
  cameraTurnOff: t("room.cameraTurnOff"),
  cameraTurnOn: t("room.cameraTurnOn"),
  cameraOff: t("room.cameraOff"),
  camera: t("devices.camera"),
  microphone: t("devices.microphone"),
  clickToHear: t("room.clickToHear"),
  waitingVideo: t("room.waitingVideo"),
  partnerHidden: t("room.partnerHidden"),
  title: t("page.title"),
  titleMatched: t("page.titleMatched"),
  addAnother: t("intro.addAnother"),
  removeTag: (tag) => t("intro.removeTag", { tag }),
  online: (n) => t("room.online", { n: formatNumber(n) }),
};

// Why getUserMedia failed, for a person who has to fix it.
export function mediaErrorText(err) {
  const name = err?.name ?? "";
  if (name === "InsecureContext") return t("media.insecure");
  if (name === "NotAllowedError" || name === "PermissionDeniedError" || name === "SecurityError") {
    return t("media.blocked");
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    if (err.missing === "camera") return t("media.missingCamera");
    if (err.missing === "microphone") return t("media.missingMic");
    return t("media.missingBoth");
  }
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
    return t("media.busy");
  }
  return t("media.other", { name: name || "unknown error" });
}

export const connection = {
  unreachable: (s) => t("connection.unreachable", { s }),
  lost: (s) => t("connection.lost", { s }),
  retryingNow: t("connection.retryingNow"),
  offline: t("connection.offline"),
  kicked: t("connection.kicked"),
  replaced: t("connection.replaced"),
  mediaFailed: t("connection.mediaFailed"),
  mediaGaveUp: t("connection.mediaGaveUp"),
  deviceEnded: t("connection.deviceEnded"),
};

// Human text for an `error` from the server, by its `code` (the server's English
// `message` is for logs and programs); null means "not worth telling the person".
export function serverErrorText(msg) {
  switch (msg.code) {
    case "not_paired":
      return null; // the partner left while a chat line was on its way
    case "rate_limited":
      return t("error.rate_limited");
    case "bad_field":
      if (msg.field === "text") return t("error.textTooLong");
      if (msg.field === "interests") return t("error.interests");
      return t("error.bad_field", { detail: msg.message ?? msg.code });
    case "internal":
      return t("error.internal");
    case "too_large":
      return t("error.too_large");
    case "too_many_sessions":
    case "too_many_new_sessions":
      // The close (4029) that follows makes the page retry with back-off.
      return t("error.too_many_sessions");
    case "too_many_peers":
      return t("error.too_many_peers");
    case "banned": {
      // Also the answer of GET /api/standing. The reason is the moderator's own words.
      const reason = typeof msg.reason === "string" && msg.reason ? msg.reason : "—";
      const said =
        typeof msg.until === "number"
          ? t("error.banned", { until: formatTime(msg.until), reason })
          : t("error.bannedForGood", { reason });
      // The operator's appeal route (--appeal-url): a URL or a sentence, shown as given.
      if (typeof msg.appeal !== "string" || !msg.appeal) return said;
      return `${said} ${t("error.bannedAppeal", { appeal: msg.appeal })}`;
    }
    case "kicked":
      return t("error.kicked", { message: msg.message ?? "" });
    default:
      // A code this page does not know yet: the server's own words, or the code.
      return msg.message ? String(msg.message) : t("error.other", { code: msg.code });
  }
}
