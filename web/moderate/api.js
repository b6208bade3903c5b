// The dashboard's calls to /api/moderate (moderation/routes.py); errors carry the server's words.

export const API = "/api/moderate";

export async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(API + path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  if (!response.ok) {
    const text = (await response.text()).trim();
    const error = new Error(text || `${method} ${path}: ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
export const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
export function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
