// The page's language: the browser's (navigator.languages), or the one picked in the
// switcher (kept in localStorage). Texts live in locales/<code>.js, one object each,
// keyed like locales/en.js, which also fills in any key a language lacks.

import english from "./locales/en.js";

export const LANGUAGES = {
  en: "English",
  es: "Español",
  pt: "Português",
  de: "Deutsch",
  tr: "Türkçe",
  ar: "العربية",
};
const RIGHT_TO_LEFT = new Set(["ar"]);
const STORAGE_KEY = "relay.lang";

function chosen() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && Object.hasOwn(LANGUAGES, saved)) return saved;
  } catch {
    // private mode: follow the browser
  }
  for (const tag of navigator.languages?.length ? navigator.languages : [navigator.language]) {
    const base = String(tag ?? "").toLowerCase().split("-")[0];
    if (Object.hasOwn(LANGUAGES, base)) return base;
  }
  return "en";
}

export const lang = chosen();
export const dir = RIGHT_TO_LEFT.has(lang) ? "rtl" : "ltr";

async function load(code) {
  if (code === "en") return english;
  try {
    return (await import(`./locales/${code}.js`)).default;
  } catch (err) {
    console.warn(`no texts for ${code}; English instead`, err);
    return english;
  }
}

const catalog = await load(lang);

// The text for `key`, with {name} filled in from `vars`.
export function t(key, vars) {
  const s = catalog[key] ?? english[key] ?? key;
  if (!vars) return s;
  return s.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

// Elements name their text with data-i18n="key", attributes with
// data-i18n-attr="placeholder:key;aria-label:key". The HTML keeps English as written.
export function translatePage(root = document) {
  document.documentElement.lang = lang;
  document.documentElement.dir = dir;
  if (lang === "en") return;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
}

// The switcher: a <select> of every language, each named in itself.
export function languageSwitcher(select) {
  select.replaceChildren(
    ...Object.entries(LANGUAGES).map(([code, name]) => {
      const option = new Option(name, code, false, code === lang);
      option.lang = code;
      return option;
    }),
  );
  select.addEventListener("change", () => {
    try {
      localStorage.setItem(STORAGE_KEY, select.value);
    } catch {
      // not kept: this visit only
    }
    // Only on the first screen, before any chat: reloading loses nothing.
    window.location.reload();
  });
}

// A number the way this language writes it (1,200 / 1.200 / ١٬٢٠٠).
export function formatNumber(n) {
  return new Intl.NumberFormat(lang).format(n);
}

// A date and time the way this language writes them.
export function formatTime(unixSeconds) {
  return new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" }).format(
    new Date(unixSeconds * 1000),
  );
}
