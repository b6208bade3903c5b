"""The moderator's HTTP surface: the dashboard under /moderate, JSON under /api/moderate.

Every route here sits behind `moderation.auth.guard` (installed by
`app.create_app`), so a handler only runs for a moderator, whose
name is in ``request[MODERATOR]``. Every action is written to the audit log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web

from moderation.auth import MODERATOR, MODERATORS, set_token_cookie
from moderation.service import Moderation, ban_until
from moderation.store import Ban, Report, ReportStatus
from rtc.peer import Peer, PeerError
from rtc.watcher import Watcher

logger = logging.getLogger(__name__)

MODERATION = web.AppKey("moderation", Moderation)
WATCHERS = web.AppKey("watchers", dict[str, Watcher])
DASHBOARD_DIR = web.AppKey("dashboard_dir", str)

MAX_REASON = 500
# The longest timed ban; longer is "permanent".
MAX_BAN_SECONDS = 10 * 365 * 86400


def setup_routes(app: web.Application, dashboard_dir: str) -> None:
    app[DASHBOARD_DIR] = dashboard_dir
    app[WATCHERS] = {}
    app.on_shutdown.append(_close_watchers)
    r = app.router
    r.add_get("/moderate", dashboard)
    r.add_get("/moderate/", dashboard)
    r.add_get("/moderate/static/{name}", dashboard_file)
    r.add_get("/api/moderate/sessions", sessions)
    r.add_get("/api/moderate/sessions/{id}/thumbnail", thumbnail)
    r.add_post("/api/moderate/sessions/{id}/kick", kick)
    r.add_post("/api/moderate/sessions/{id}/release", release)
    r.add_get("/api/moderate/bans", bans)
    r.add_post("/api/moderate/bans", ban)
    r.add_post("/api/moderate/bans/{id}/lift", lift_ban)
    r.add_get("/api/moderate/reports", reports)
    r.add_post("/api/moderate/reports/{id}/review", review)
    r.add_get("/api/moderate/recordings", recordings)
    r.add_post("/api/moderate/recordings", start_recording)
    r.add_post("/api/moderate/recordings/stop", stop_recording)
    r.add_get("/api/moderate/recordings/{name}", recording_file)
    r.add_post("/api/moderate/watch", watch)
    r.add_delete("/api/moderate/watch/{id}", stop_watching)
    r.add_get("/api/moderate/audit", audit)


def _who(request: web.Request) -> str:
    return request[MODERATOR].name


async def _audit(request: web.Request, action: str, target: str, detail: str = "") -> None:
    store = request.app[MODERATION].store
    await asyncio.to_thread(store.audit, _who(request), action, target, detail)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _session_ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("sessionIds")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= 2
        or not all(isinstance(i, str) for i in ids)
    ):
        raise web.HTTPBadRequest(text="sessionIds: a list of one or two session ids")
    return ids


# -- pages ---------------------------------------------------------------


async def dashboard(request: web.Request) -> web.StreamResponse:
    path = os.path.join(request.app[DASHBOARD_DIR], "index.html")
    response = web.FileResponse(path, headers={"Cache-Control": "no-store"})
    # The page's own fetches carry Basic credentials anyway; the cookie lets
    # media elements (<img>, <video>) load without them.
    token = request.app[MODERATORS].issue_token(request[MODERATOR])
    set_token_cookie(response, token, secure=request.secure)
    return response


async def dashboard_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("dashboard.js", "dashboard.css"):
        raise web.HTTPNotFound()
    path = os.path.join(request.app[DASHBOARD_DIR], name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


# -- the live view ---------------------------------------------------------


async def sessions(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION]
    watchers = request.app[WATCHERS]
    for watch_id, watcher in list(watchers.items()):
        if watcher.closed:  # its connection failed or closed
            del watchers[watch_id]
    return web.json_response(
        {
            "sessions": await moderation.live_view(),
            "watching": [
                {"id": w.id, "sessionIds": w.watched, "moderator": w.moderator}
                for w in watchers.values()
            ],
        }
    )


async def thumbnail(request: web.Request) -> web.Response:
    followed = request.app[MODERATION].followed.get(request.match_info["id"])
    if followed is None or followed.thumbnail is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=followed.thumbnail, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
    )


# -- kick and ban ------------------------------------------------------------


async def kick(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    body = await _json(request)
    message = str(body.get("message") or "a moderator ended your session")[:MAX_REASON]
    if not request.app[MODERATION].lobby.kick(session_id, message):
        raise web.HTTPNotFound(text="no such session")
    await _audit(request, "kick", f"session:{session_id}", message)
    return web.json_response({"kicked": session_id})


async def release(request: web.Request) -> web.Response:
    """A moderator looked at a stream held back by --nudity-blur: partners see it again."""
    session_id = request.match_info["id"]
    if not request.app[MODERATION].release(session_id):
        raise web.HTTPNotFound(text="no such session with held video")
    await _audit(request, "release", f"session:{session_id}")
    return web.json_response({"released": session_id})


def _ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "id": ban.id,
        "identity": ban.identity,
        "ip": ban.ip,
        "reason": ban.reason,
        "createdAt": ban.created_at,
        "expiresAt": ban_until(ban),
        "createdBy": ban.created_by,
    }


async def bans(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    found = await asyncio.to_thread(store.bans)
    return web.json_response({"bans": [_ban_json(b) for b in found]})


async def ban(request: web.Request) -> web.Response:
    """Ban by `sessionId` (its identity and IP), or by `identity` and/or `ip`."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    identity, ip = body.get("identity"), body.get("ip")
    if isinstance(body.get("sessionId"), str):
        session = moderation.lobby.sessions.get(body["sessionId"])
        if session is None:
            raise web.HTTPNotFound(text="no such session")
        identity, ip = session.identity, session.ip
    if not (isinstance(identity, str) or isinstance(ip, str)):
        raise web.HTTPBadRequest(text="a ban needs a sessionId, an identity or an ip")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise web.HTTPBadRequest(text="reason: a non-empty string")
    seconds = body.get("seconds")
    # JSON bodies may carry NaN and Infinity, and bool is an int: name what is accepted.
    if seconds != "permanent" and (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= MAX_BAN_SECONDS
    ):
        raise web.HTTPBadRequest(
            text=f"seconds: a number from 0 (exclusive) to {MAX_BAN_SECONDS} (10 years), "
            'or "permanent"'
        )
    try:
        made = await moderation.ban(
            _who(request),
            identity=identity if isinstance(identity, str) else None,
            ip=ip if isinstance(ip, str) else None,
            seconds=None if seconds == "permanent" else float(seconds),
            reason=reason.strip()[:MAX_REASON],
        )
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(_ban_json(made))


async def lift_ban(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    try:
        lifted = await asyncio.to_thread(
            store.lift_ban, int(request.match_info["id"]), _who(request)
        )
    except (KeyError, ValueError):
        raise web.HTTPNotFound(text="no such ban") from None
    return web.json_response(_ban_json(lifted))


# -- reports ---------------------------------------------------------------


def _report_json(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "createdAt": report.created_at,
        "reporterId": report.reporter_id,
        "reportedId": report.reported_id,
        "reason": report.reason,
        "evidence": os.path.basename(report.evidence_path) if report.evidence_path else None,
        "transcript": [
            {"at": line.at, "sender": line.sender, "text": line.text} for line in report.transcript
        ],
        "status": report.status.value,
        "reviewedBy": report.reviewed_by,
        "reviewedAt": report.reviewed_at,
    }


async def reports(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    status = request.query.get("status")
    found = await asyncio.to_thread(
        store.reports, status=ReportStatus(status) if status in ("open", "reviewed") else None
    )
    return web.json_response({"reports": [_report_json(r) for r in found]})


async def review(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    body = await _json(request)
    note = str(body.get("note") or "")[:MAX_REASON]
    try:
        done = await asyncio.to_thread(
            store.review_report, int(request.match_info["id"]), _who(request), note=note
        )
    except (KeyError, ValueError):
        raise web.HTTPNotFound(text="no such report") from None
    return web.json_response(_report_json(done))


# -- recordings ------------------------------------------------------------


async def recordings(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION]
    return web.json_response({"recordings": await asyncio.to_thread(moderation.recordings)})


async def start_recording(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION]
    started = []
    for session_id in _session_ids(await _json(request)):
        try:
            recording = moderation.start_recording(session_id, _who(request))
        except KeyError:
            raise web.HTTPNotFound(text=f"no media from session {session_id}") from None
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        name = recording.recorder.path.name
        await _audit(request, "record", f"session:{session_id}", name)
        started.append({"sessionId": session_id, "name": name})
    return web.json_response({"recording": started})


async def stop_recording(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION]
    stopped = []
    for session_id in _session_ids(await _json(request)):
        path = await asyncio.to_thread(moderation.stop_recording, session_id)
        name = path.name if path is not None else None
        await _audit(request, "stop_recording", f"session:{session_id}", name or "")
        stopped.append({"sessionId": session_id, "name": name})
    return web.json_response({"stopped": stopped})


async def recording_file(request: web.Request) -> web.StreamResponse:
    """One recording, by its unguessable name; never a static route."""
    name = request.match_info["name"]
    path = request.app[MODERATION].recording_path(name)
    if path is None:
        raise web.HTTPNotFound()
    download = request.query.get("download") == "1"
    await _audit(request, "download" if download else "play", f"recording:{name}")
    headers = {"Cache-Control": "no-store", "Content-Type": "video/webm"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return web.FileResponse(path, headers=headers)


# -- watching live -----------------------------------------------------------


async def watch(request: web.Request) -> web.Response:
    """Answer a moderator's offer (per watched user: one audio, one video, recvonly)."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    ids = _session_ids(body)
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise web.HTTPBadRequest(text="sdp: the offer")
    peers: list[Peer] = []
    for session_id in ids:
        session = moderation.lobby.sessions.get(session_id)
        if session is None or session.peer is None:
            raise web.HTTPNotFound(text=f"no media from session {session_id}")
        peers.append(session.peer)
    # Gathered like the users' own connections: same ICE servers, same addresses.
    watcher = Watcher(_who(request), moderation.lobby.relay.settings)
    try:
        answer = await watcher.answer(sdp, peers)
    except PeerError as exc:
        await watcher.close()
        raise web.HTTPBadRequest(text=exc.message) from None
    except BaseException:
        await watcher.close()
        raise
    request.app[WATCHERS][watcher.id] = watcher
    await _audit(request, "watch", ",".join(f"session:{i}" for i in ids), watcher.id)
    logger.info("%r started", watcher)
    return web.json_response({"watchId": watcher.id, "sdp": answer})


async def stop_watching(request: web.Request) -> web.Response:
    watcher = request.app[WATCHERS].pop(request.match_info["id"], None)
    if watcher is None:
        raise web.HTTPNotFound()
    await watcher.close()
    await _audit(request, "stop_watching", ",".join(watcher.watched), watcher.id)
    return web.json_response({"stopped": watcher.id})


async def _close_watchers(app: web.Application) -> None:
    watchers = app[WATCHERS]
    await asyncio.gather(*(w.close() for w in watchers.values()), return_exceptions=True)
    watchers.clear()


# -- audit log ---------------------------------------------------------------


async def audit(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    entries = await asyncio.to_thread(store.audit_log, limit=200)
    return web.json_response(
        {
            "audit": [
                {
                    "id": e.id,
                    "at": e.at,
                    "who": e.who,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in entries
            ]
        }
    )
