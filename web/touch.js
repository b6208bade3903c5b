// Phones and tablets: no keyboard to press Enter or Esc on, and a keyboard that
// covers half the screen when a text box takes focus.

// Touch only: a coarse primary pointer and no fine one (a laptop with a touch screen
// still has its touchpad and keyboard, and keeps the keyboard wording).
export const touchOnly =
  window.matchMedia("(pointer: coarse)").matches && !window.matchMedia("(any-pointer: fine)").matches;

// Take the keyboard hints out of the page: visible text, screen reader shortcuts.
export function useTouchWording({ nextButton, interestHint }, hint) {
  nextButton.removeAttribute("aria-keyshortcuts");
  nextButton.querySelector("kbd")?.remove();
  interestHint.textContent = hint;
}
