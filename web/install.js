// Installable: the service worker that keeps the app shell (web/sw.js, served at /sw.js
// so that its scope is the whole site).

export function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return;
  window.addEventListener("load", () => {
    navigator.serviceWorker.register("/sw.js").catch((err) => console.info("no offline shell:", err));
  });
}
