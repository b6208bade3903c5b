// The text chat beside the video: the log, the input, and both typing indicators.

import { chat as words } from "./messages.js";

// Tell the partner we stopped typing after this long without a keystroke.
const TYPING_IDLE_MS = 3000;
// If their "stopped typing" never arrives (they left mid-word), hide the indicator anyway.
const THEIR_TYPING_MAX_MS = 15000;

export class ChatPanel {
  /**
   * @param {object} opts
   * @param {(text: string) => void} opts.onsend
   * @param {(active: boolean) => void} opts.ontyping
   */
  constructor({ log, typing, form, input, button, onsend, ontyping }) {
    this.log = log;
    this.typing = typing;
    this.input = input;
    this.button = button;
    this.onsend = onsend;
    this.ontyping = ontyping;
    this.typingSent = false;
    this.typingTimer = 0;
    this.theirTypingTimer = 0;
    this.maxChars = 2000;

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text || input.disabled) return;
      this.onsend(text.slice(0, this.maxChars));
      this.mine(text);
      input.value = "";
      this.stopTyping();
    });
    input.addEventListener("input", () => {
      if (input.value.trim() === "") {
        this.stopTyping();
        return;
      }
      if (!this.typingSent) {
        this.typingSent = true;
        this.ontyping(true);
      }
      clearTimeout(this.typingTimer);
      this.typingTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
    });
    input.addEventListener("blur", () => this.stopTyping());

    // The newest message stays in view when the log shrinks: the phone keyboard opening
    // (the page asks for interactive-widget=resizes-content), a banner, a rotation.
    this.atBottom = true;
    log.addEventListener("scroll", () => {
      this.atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    });
    new ResizeObserver(() => {
      if (this.atBottom) this.scrollToEnd();
    }).observe(log);
    // Like messaging apps: starting to type shows the newest message.
    input.addEventListener("focus", () => this.scrollToEnd());
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
    this.atBottom = true;
  }

  setMaxChars(n) {
    if (Number.isInteger(n) && n > 0) {
      this.maxChars = n;
      this.input.maxLength = n;
    }
  }

  enable(on) {
    this.input.disabled = !on;
    this.button.disabled = !on;
    if (!on) {
      this.stopTyping();
      this.setTheirTyping(false);
    }
  }

  clear() {
    this.log.replaceChildren();
    this.setTheirTyping(false);
  }

  mine(text) {
    this.append("msg msg-mine", text, words.you);
    this.scrollToEnd();
  }

  theirs(text) {
    this.setTheirTyping(false);
    this.append("msg msg-theirs", text, words.stranger);
  }

  system(text, { strong = false, tags = [] } = {}) {
    const li = document.createElement("li");
    li.className = strong ? "msg-system strong" : "msg-system";
    li.append(text);
    for (const tag of tags) {
      const span = document.createElement("span");
      span.className = "shared";
      span.textContent = tag;
      li.append(" ", span);
    }
    this.push(li);
  }

  setTheirTyping(active) {
    clearTimeout(this.theirTypingTimer);
    this.typing.hidden = !active;
    if (active) {
      this.theirTypingTimer = setTimeout(() => (this.typing.hidden = true), THEIR_TYPING_MAX_MS);
    }
  }

  stopTyping() {
    clearTimeout(this.typingTimer);
    if (this.typingSent) {
      this.typingSent = false;
      this.ontyping(false);
    }
  }

  append(className, text, who) {
    const li = document.createElement("li");
    li.className = className;
    const name = document.createElement("span");
    name.className = "msg-who sr-only";
    name.textContent = `${who}: `;
    li.append(name, text);
    this.push(li);
  }

  push(li) {
    const log = this.log;
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    log.append(li);
    if (nearBottom) this.scrollToEnd();
  }
}
