// The optional interests (tags) entered before Start, remembered between visits.

import { room as words } from "./messages.js";

const STORAGE_KEY = "roulette-relay.interests";
const MAX_CHARS = 32;

export class InterestInput {
  constructor({ box, input, max = 10 }) {
    this.box = box;
    this.input = input;
    this.max = max;
    this.tags = [];
    this.emptyPlaceholder = input.placeholder;

    box.addEventListener("click", (event) => {
      if (event.target === box) input.focus();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === "," || event.key === "Tab") {
        if (input.value.trim() === "") return; // Tab and Enter keep their usual meaning
        event.preventDefault();
        this.commit();
      } else if (event.key === "Backspace" && input.value === "" && this.tags.length) {
        this.remove(this.tags[this.tags.length - 1]);
      }
    });
    // Pasted "music, cats" becomes two tags.
    input.addEventListener("input", () => {
      if (input.value.includes(",")) this.commit();
    });
    input.addEventListener("blur", () => this.commit());

    for (const tag of load()) this.add(tag);
  }

  // Show `tags` instead of what is there (another editor of the same interests changed them).
  replace(tags) {
    for (const tag of [...this.tags]) this.remove(tag);
    for (const tag of tags) this.add(tag);
  }

  // Everything typed so far, including an entry not yet confirmed with Enter.
  value() {
    this.commit();
    return [...this.tags];
  }

  commit() {
    const parts = this.input.value.split(",");
    this.input.value = "";
    for (const part of parts) this.add(part);
  }

  add(raw) {
    const tag = raw.trim().replace(/\s+/g, " ").slice(0, MAX_CHARS);
    if (!tag || this.tags.length >= this.max) return;
    if (this.tags.some((t) => t.toLowerCase() === tag.toLowerCase())) return;
    this.tags.push(tag);
    const chip = document.createElement("span");
    chip.className = "tag";
    chip.dataset.tag = tag;
    chip.append(tag);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.setAttribute("aria-label", words.removeTag(tag));
    remove.addEventListener("click", () => this.remove(tag));
    chip.append(remove);
    this.box.insertBefore(chip, this.input);
    this.input.placeholder = this.tags.length >= this.max ? "" : words.addAnother;
    save(this.tags);
  }

  remove(tag) {
    this.tags = this.tags.filter((t) => t !== tag);
    for (const chip of this.box.querySelectorAll(".tag")) {
      if (chip.dataset.tag === tag) chip.remove();
    }
    this.input.placeholder = this.tags.length ? words.addAnother : this.emptyPlaceholder;
    save(this.tags);
  }
}

function load() {
  try {
    const tags = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "[]");
    return Array.isArray(tags) ? tags.filter((t) => typeof t === "string") : [];
  } catch {
    return [];
  }
}

function save(tags) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(tags));
  } catch {
    // private mode: interests are just not remembered
  }
}
