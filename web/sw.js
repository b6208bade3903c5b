// The page's service worker: keeps the app shell (the page, its scripts, styles and
// icons) so Roulette Relay opens and installs like an app, even on a bad network.
// It never touches media (that is WebRTC, not fetch), the WebSocket, /api or the
// moderators' dashboard: only GETs of "/" and "/static/".
//
// Network first: a visitor online always gets the page the server has now (a cached
// page talking to a newer server would be a bug); the cache answers only offline.

const CACHE = "relay-shell-v1";
const SHELL = [
  "/",
  "/static/style.css",
  "/static/app.js",
  "/static/chat.js",
  "/static/interests.js",
  "/static/media.js",
  "/static/messages.js",
  "/static/peer.js",
  "/static/remoteview.js",
  "/static/signalling.js",
  "/static/touch.js",
  "/static/install.js",
  "/static/i18n.js",
  "/static/locales/en.js",
  "/static/favicon.svg",
  "/static/manifest.webmanifest",
  "/static/icons/icon-192.png",
];

self.addEventListener("install", (event) => {
  // One missing file must not stop the rest from being kept.
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => Promise.all(SHELL.map((url) => cache.add(url).catch(() => {}))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

function isShell(request) {
  const url = new URL(request.url);
  return (
    request.method === "GET" &&
    url.origin === self.location.origin &&
    (url.pathname === "/" || url.pathname.startsWith("/static/"))
  );
}

self.addEventListener("fetch", (event) => {
  if (!isShell(event.request)) return; // the browser's own handling, untouched
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok && response.type === "basic") {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(event.request, copy));
        }
        return response;
      })
      .catch(async () => (await caches.match(event.request, { ignoreSearch: true })) ?? Response.error()),
  );
});
