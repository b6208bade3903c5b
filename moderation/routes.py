"""The moderator's HTTP surface: the dashboard under /moderate, JSON under /api/moderate.

Every route here sits behind `moderation.auth.guard` (installed by
`app.create_app`), so a handler only runs for a moderator, whose
name is in ``request[MODERATOR]``. Every action is written to the audit log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

from aiohttp import web

from moderation.auth import MODERATOR, MODERATORS, set_token_cookie
from moderation.ban_terms import BanTermError, ban_seconds, parse_scope
from moderation.channel import ChannelError
from moderation.events import CLOSED
from moderation.files import RemoteFile, RemoteFiles
from moderation.live import LiveSessions, SessionQuery
from moderation.recorder import PARTS, RECORDING_NAME, extract_part
from moderation.remote import RemoteFeedError, RemoteMedia
from moderation.service import BanMade, Moderation, ban_json, report_json
from moderation.store import ClaimConflict, ReportStatus
from rtc.peer import Peer, PeerError
from rtc.watcher import Watched, Watcher

logger = logging.getLogger(__name__)

MODERATION = web.AppKey("moderation", Moderation)
LIVE = web.AppKey("live", LiveSessions)
FILES = web.AppKey("files", RemoteFiles)
WATCHERS = web.AppKey("watchers", dict[str, Watcher])
DASHBOARD_DIR = web.AppKey("dashboard_dir", str)
DASHBOARD_FILES = frozenset(
    ("dashboard.js", "dashboard.css", "queue.js", "bandialog.js", "api.js", "live.js")
)

MAX_REASON = 500
# Seconds between keep-alive comments on the dashboard's event stream.
HEARTBEAT = 15.0
# Report decisions a moderator can resolve with (a ban resolves as "banned" itself).
DECISIONS = ("no_violation", "warned", "kicked", "banned", "reviewed")


def setup_routes(app: web.Application, dashboard_dir: str) -> None:
    app[DASHBOARD_DIR] = dashboard_dir
    app[WATCHERS] = {}
    app.on_shutdown.append(_close_watchers)
    app.on_shutdown.append(_close_events)
    r = app.router
    r.add_get("/moderate", dashboard)
    r.add_get("/moderate/", dashboard)
    r.add_get("/moderate/static/{name}", dashboard_file)
    r.add_get("/api/moderate/sessions", sessions)
    r.add_get("/api/moderate/sessions/{id}/thumbnail", thumbnail)
    r.add_get("/api/moderate/sessions/{id}/chat", live_chat)
    r.add_post("/api/moderate/sessions/{id}/kick", kick)
    r.add_post("/api/moderate/sessions/{id}/release", release)
    r.add_get("/api/moderate/bans", bans)
    r.add_post("/api/moderate/bans", ban)
    r.add_post("/api/moderate/bans/{id}/lift", lift_ban)
    r.add_get("/api/moderate/reports", reports)
    r.add_post("/api/moderate/reports/{id}/review", review)
    r.add_get("/api/moderate/queue", report_queue)
    r.add_post("/api/moderate/reports/{id}/claim", claim)
    r.add_post("/api/moderate/reports/{id}/ban", ban_from_report)
    r.add_get("/api/moderate/history/{subject}", history)
    r.add_get("/api/moderate/events", events)
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


def _node(request: web.Request, body: dict[str, Any] | None = None) -> str | None:
    """The `node` a request names (body or query): where the session it acts on lives."""
    node = (body or {}).get("node", request.query.get("node"))
    if node is None or node == "":
        return None
    if not isinstance(node, str) or len(node) > 200:
        raise web.HTTPBadRequest(text="node: the node id the sessions list gave")
    return node


def _failed(exc: ChannelError) -> web.Response:
    """A request another node refused, or could not be asked: its status and its words."""
    return web.Response(status=exc.status, text=exc.message)


def _session_ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("sessionIds")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= 2
        or not all(isinstance(i, str) for i in ids)
    ):
        raise web.HTTPBadRequest(text="sessionIds: a list of one or two session ids")
    return ids


def _nodes(body: dict[str, Any], ids: list[str], here: str) -> list[str | None]:
    """Per session id, the node holding it when that is another node (None: this one).

    `node` is one node id for every id, or a list of one per id (a pair across nodes);
    absent, every id is on this node.
    """
    node = body.get("node")
    nodes = node if isinstance(node, list) else [node] * len(ids)
    if len(nodes) != len(ids) or not all(
        n is None or (isinstance(n, str) and 0 < len(n) <= 200) for n in nodes
    ):
        raise web.HTTPBadRequest(
            text="node: the id of the node holding the session (a string), or one per session"
        )
    return [None if n == here else n for n in nodes]


def _remote(request: web.Request) -> RemoteMedia:
    remote = request.app[MODERATION].remote
    if remote is None:
        raise web.HTTPNotFound(text="this server is not part of a cluster")
    return remote


def _refused(exc: RemoteFeedError) -> web.HTTPException:
    """The answer for a person on another node who cannot be reached; says why."""
    if exc.code == "timeout":
        return web.HTTPGatewayTimeout(text=exc.message)
    if exc.code == "busy":
        return web.HTTPServiceUnavailable(text=exc.message)
    if exc.code in ("bad_request", "bad_answer"):
        return web.HTTPBadGateway(text=exc.message)
    return web.HTTPNotFound(text=exc.message)  # no such node, session or media


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
    if name not in DASHBOARD_FILES:
        raise web.HTTPNotFound()
    path = os.path.join(request.app[DASHBOARD_DIR], name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


# -- the live view ---------------------------------------------------------


async def sessions(request: web.Request) -> web.Response:
    """A page of everyone online on every node (moderation/live.py), and who is watched."""
    try:
        query = SessionQuery.parse(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    watchers = request.app[WATCHERS]
    for watch_id, watcher in list(watchers.items()):
        if watcher.closed:  # its connection failed or closed
            del watchers[watch_id]
    page = await request.app[LIVE].page(query)
    return web.json_response(
        page
        | {
            "node": request.app[LIVE].node,
            "watching": [
                {"id": w.id, "sessionIds": w.watched, "moderator": w.moderator}
                for w in watchers.values()
            ],
        }
    )


async def thumbnail(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    node = _node(request)
    live = request.app[LIVE]
    if node is not None and node != live.node:
        try:
            jpeg = await live.thumbnail(node, session_id)
        except ChannelError as exc:
            return _failed(exc)
    else:
        followed = request.app[MODERATION].person(session_id)
        if followed is None or followed.thumbnail is None:
            raise web.HTTPNotFound()
        jpeg = followed.thumbnail
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def live_chat(request: web.Request) -> web.Response:
    """The current pair's chat of a session on any node (`?node=`; the watch view shows it)."""
    live = request.app[LIVE]
    try:
        chat = await live.chat(_node(request) or live.node, request.match_info["id"])
    except ChannelError as exc:
        if exc.status == 404:
            raise web.HTTPNotFound(text="no such session") from None
        return _failed(exc)
    return web.json_response(chat)


# -- kick and ban ------------------------------------------------------------


async def kick(request: web.Request) -> web.Response:
    """End a visit on whichever node holds it (`node` from the sessions list, or found)."""
    session_id = request.match_info["id"]
    body = await _json(request)
    message = str(body.get("message") or "a moderator ended your session")[:MAX_REASON]
    live = request.app[LIVE]
    try:
        node = await live.locate(session_id, _node(request, body))
        node = await live.kick(node, session_id, message)
    except ChannelError as exc:
        return _failed(exc)
    await _audit(request, "kick", f"session:{session_id}", f"{message} (node {node})")
    return web.json_response({"kicked": session_id, "node": node})


async def release(request: web.Request) -> web.Response:
    """A moderator looked at a stream held back by --nudity-blur: partners see it again."""
    session_id = request.match_info["id"]
    body = await _json(request) if request.can_read_body else {}
    live = request.app[LIVE]
    try:
        node = await live.locate(session_id, _node(request, body))
        node = await live.release(node, session_id)
    except ChannelError as exc:
        if exc.status == 404:
            raise web.HTTPNotFound(text="no such session with held video") from None
        return _failed(exc)
    await _audit(request, "release", f"session:{session_id}", f"node {node}")
    return web.json_response({"released": session_id, "node": node})


async def bans(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    found = await asyncio.to_thread(store.bans)
    return web.json_response({"bans": [ban_json(b) for b in found]})


def _ban_terms(body: dict[str, Any]) -> tuple[float | None, str]:
    """Length (None: permanent) and reason of a ban request; 400 for anything unclear.

    The length is `duration` (a preset such as "24h", or "<n><m|h|d|w>") or, as
    before, `seconds` (a number, or "permanent").
    """
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise web.HTTPBadRequest(text="reason: a non-empty string")
    length = body["duration"] if "duration" in body else body.get("seconds")
    try:
        seconds = ban_seconds(length)
    except BanTermError as exc:
        raise web.HTTPBadRequest(text=f'{exc}, or "permanent"') from None
    return seconds, reason.strip()[:MAX_REASON]


async def ban(request: web.Request) -> web.Response:
    """Ban by `sessionId` (its identity and IP), or by `identity` and/or `ip`."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    identity, ip = body.get("identity"), body.get("ip")
    person = address = None
    if isinstance(body.get("sessionId"), str):
        # What the ban keeps comes from the node holding the session, wherever it is.
        live = request.app[LIVE]
        try:
            node = await live.locate(body["sessionId"], _node(request, body))
            session = await live.describe(node, body["sessionId"])
        except ChannelError as exc:
            if exc.status == 404:
                raise web.HTTPNotFound(text="no such session") from None
            return _failed(exc)
        try:
            scope = parse_scope(body.get("scope"))
        except BanTermError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        identity = session["identity"] if scope.by_identity else None
        ip = session["ip"] if scope.by_address else None
        person = session["person"] if scope.by_identity else None
        # A scope names what the ban must hold; a ban that quietly covers less than asked
        # (say "identity+address" stored without the address) would let them back in.
        if scope.by_identity and identity is None:
            raise web.HTTPBadRequest(
                text='this visitor sent no clientId: use scope "address" or "identity+address"'
            )
        if scope.by_address and ip is None:
            raise web.HTTPBadRequest(
                text='this visitor\'s address is not known: use scope "identity"'
            )
    if not (isinstance(identity, str) or isinstance(ip, str)):
        raise web.HTTPBadRequest(text="a ban needs a sessionId, an identity or an ip")
    seconds, reason = _ban_terms(body)
    try:
        made = await moderation.ban(
            _who(request),
            identity=identity if isinstance(identity, str) else None,
            ip=ip if isinstance(ip, str) else None,
            person=person,
            address=address,
            seconds=seconds,
            reason=reason,
        )
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(_made_json(made))


def _made_json(made: BanMade) -> dict[str, Any]:
    """The ban, how many live visits it ended, and the nodes it could not reach (why)."""
    return ban_json(made.ban) | {
        "ended": made.ended,
        "missed": [{"node": node, "error": error} for node, error in sorted(made.missed.items())],
    }


async def lift_ban(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    try:
        lifted = await asyncio.to_thread(
            store.lift_ban, int(request.match_info["id"]), _who(request)
        )
    except (KeyError, ValueError):
        raise web.HTTPNotFound(text="no such ban") from None
    return web.json_response(ban_json(lifted))


# -- reports ---------------------------------------------------------------


async def reports(request: web.Request) -> web.Response:
    store = request.app[MODERATION].store
    status = request.query.get("status")
    found = await asyncio.to_thread(
        store.reports, status=ReportStatus(status) if status in ("open", "reviewed") else None
    )
    return web.json_response({"reports": [report_json(r) for r in found]})


def _report_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such report") from None


async def review(request: web.Request) -> web.Response:
    """Resolve a report: `{"decision": one of DECISIONS, "note"}`."""
    store = request.app[MODERATION].store
    body = await _json(request)
    note = str(body.get("note") or "")[:MAX_REASON]
    decision = body.get("decision", "reviewed")
    if decision not in DECISIONS:
        raise web.HTTPBadRequest(text=f"decision: one of {', '.join(DECISIONS)}")
    try:
        done = await asyncio.to_thread(
            lambda: store.review_report(
                _report_id(request), _who(request), note=note, decision=str(decision)
            )
        )
    except KeyError:
        raise web.HTTPNotFound(text="no such report") from None
    request.app[MODERATION].events.publish("queue")
    return web.json_response(report_json(done))


async def report_queue(request: web.Request) -> web.Response:
    """Open reports, most urgent first (moderation/queue.py)."""
    return web.json_response({"queue": await request.app[MODERATION].queue()})


async def claim(request: web.Request) -> web.Response:
    """Take a report (`{"force": true}` takes it from another moderator)."""
    store = request.app[MODERATION].store
    body = await _json(request) if request.can_read_body else {}
    force = body.get("force") is True
    try:
        taken = await asyncio.to_thread(
            lambda: store.claim_report(_report_id(request), _who(request), force=force)
        )
    except KeyError:
        raise web.HTTPNotFound(text="no such report") from None
    except ClaimConflict as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    request.app[MODERATION].events.publish("queue")
    return web.json_response(report_json(taken))


async def ban_from_report(request: web.Request) -> web.Response:
    """Ban the person a report is about, gone or not: `{"duration", "scope", "reason"}`."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    seconds, reason = _ban_terms(body)
    try:
        made = await moderation.ban_from_report(
            _who(request),
            _report_id(request),
            scope=parse_scope(body.get("scope")),
            seconds=seconds,
            reason=reason,
        )
    except KeyError:
        raise web.HTTPNotFound(text="no such report") from None
    except BanTermError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(_made_json(made))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events naming what changed (`queue`, `sessions`), for the dashboard.

    A comment line every HEARTBEAT seconds keeps proxies from closing an idle stream
    and finds a dashboard that went away; the stream ends when the server stops.
    """
    hub = request.app[MODERATION].events
    try:
        listener = hub.listen()
    except OverflowError:
        raise web.HTTPServiceUnavailable(text="too many dashboards listening") from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        while True:
            try:
                names = await asyncio.wait_for(listener.next(), HEARTBEAT)
            except TimeoutError:
                await response.write(b": still here\n\n")
                continue
            if CLOSED in names:
                break  # the server is stopping: the page's EventSource reconnects later
            for name in names:
                await response.write(f"event: {name}\ndata: {{}}\n\n".encode())
    except ConnectionError:
        pass  # the dashboard went away
    finally:
        hub.forget(listener)
    return response


async def history(request: web.Request) -> web.Response:
    """One person's reports, decisions and bans, by the `subject` a report names."""
    subject = request.match_info["subject"]
    if len(subject) > 100:
        raise web.HTTPNotFound(text="no such person")
    return web.json_response(await request.app[MODERATION].history(subject))


# -- recordings ------------------------------------------------------------


async def recordings(request: web.Request) -> web.Response:
    """Every node's recordings and evidence files, each with the `node` holding it."""
    rows, missed = await request.app[FILES].recordings()
    missing = [{"node": node, "error": error} for node, error in sorted(missed.items())]
    return web.json_response({"recordings": rows, "missing": missing})


async def start_recording(request: web.Request) -> web.Response:
    """Record `sessionIds`; a person on another node (`node`) is recorded into a file here."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    ids = _session_ids(body)
    started = []
    for session_id, node in zip(ids, _nodes(body, ids, moderation.lobby.node), strict=True):
        try:
            if node is None:
                recording = moderation.start_recording(session_id, _who(request))
            else:
                recording = await _remote(request).record(
                    node, session_id, _who(request), moderation.recordings_dir
                )
        except KeyError:
            raise web.HTTPNotFound(text=f"no media from session {session_id}") from None
        except RemoteFeedError as exc:
            raise _refused(exc) from None
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        name = recording.recorder.path.name
        target = f"session:{session_id}" + (f"@{node}" if node else "")
        await _audit(request, "record", target, name)
        started.append({"sessionId": session_id, "name": name})
    return web.json_response({"recording": started})


async def stop_recording(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION]
    body = await _json(request)
    ids = _session_ids(body)
    stopped = []
    for session_id, node in zip(ids, _nodes(body, ids, moderation.lobby.node), strict=True):
        if node is None:
            path = await asyncio.to_thread(moderation.stop_recording, session_id)
        else:
            path = await _remote(request).stop_recording(node, session_id)
        name = path.name if path is not None else None
        await _audit(request, "stop_recording", f"session:{session_id}", name or "")
        stopped.append({"sessionId": session_id, "name": name})
    return web.json_response({"stopped": stopped})


async def recording_file(request: web.Request) -> web.StreamResponse:
    """One recording, by its unguessable name; never a static route.

    A file written by another node (a report filed there, a recording made there) is
    read from that node through the moderation channel (moderation/files.py).
    """
    name = request.match_info["name"]
    moderation = request.app[MODERATION]
    download = request.query.get("download") == "1"
    part = request.query.get("part")
    if part is not None and part not in PARTS:
        raise web.HTTPBadRequest(text=f"part: one of {', '.join(PARTS)}")
    path = moderation.recording_path(name)
    remote: RemoteFile | None = None
    if path is None:
        if moderation.remote is None or not RECORDING_NAME.fullmatch(name):
            raise web.HTTPNotFound()
        try:
            remote = await request.app[FILES].find(name, _node(request))
        except ChannelError as exc:
            return _failed(exc)
    where = "" if remote is None else f" (node {remote.node})"
    await _audit(
        request, "download" if download else "play", f"recording:{name}", (part or "") + where
    )
    headers = {"Cache-Control": "no-store", "Content-Type": "video/webm"}
    if part is not None:
        # One person of an evidence file, so the dashboard can show both side by side.
        try:
            if path is not None:
                body = await asyncio.to_thread(extract_part, path, part)
            else:
                assert remote is not None
                async with request.app[FILES].local_copy(remote) as copy:
                    body = await asyncio.to_thread(extract_part, copy, part)
        except ChannelError as exc:
            return _failed(exc)
        if body is None:
            raise web.HTTPNotFound(text=f"this recording has no {part} tracks")
        return web.Response(body=body, headers=headers)
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    if path is not None:
        return web.FileResponse(path, headers=headers)
    assert remote is not None
    return await _stream_remote(request, remote, headers)


async def _stream_remote(
    request: web.Request, file: RemoteFile, headers: dict[str, str]
) -> web.StreamResponse:
    """A file on another node, chunk by chunk, honouring one byte range (for seeking)."""
    try:
        wanted = request.http_range
    except ValueError:
        unsatisfiable = {"Content-Range": f"bytes */{file.size}"}
        raise web.HTTPRequestRangeNotSatisfiable(headers=unsatisfiable) from None
    start, stop = wanted.start or 0, file.size if wanted.stop is None else wanted.stop
    if start < 0:  # "bytes=-N": the last N bytes
        start, stop = max(0, file.size + start), file.size
    stop = min(stop, file.size)
    ranged = request.headers.get("Range") is not None
    if ranged and start >= stop:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{file.size}"})
    headers["Accept-Ranges"] = "bytes"
    if ranged:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{file.size}"
    chunks = request.app[FILES].chunks(file, start, stop)
    try:
        # The first chunk before any header: a holder that cannot answer is a clear error.
        first = await anext(chunks, b"")
    except ChannelError as exc:
        await chunks.aclose()
        return _failed(exc)
    response = web.StreamResponse(status=206 if ranged else 200, headers=headers)
    response.content_length = stop - start
    await response.prepare(request)
    try:
        await response.write(first)
        async for data in chunks:
            await response.write(data)
    except ChannelError as exc:
        # Headers are sent: all that is left is to cut the download short, visibly.
        logger.warning("stopped sending %s from node %s: %s", file.name, file.node, exc.message)
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionResetError:
        return response  # the player went away (seeking, closing): nothing to send to
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response


# -- watching live -----------------------------------------------------------


async def watch(request: web.Request) -> web.Response:
    """Answer a moderator's offer (per watched user: one audio, one video, recvonly)."""
    moderation = request.app[MODERATION]
    body = await _json(request)
    ids = _session_ids(body)
    nodes = _nodes(body, ids, moderation.lobby.node)
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise web.HTTPBadRequest(text="sdp: the offer")
    watched: list[Watched] = []
    for session_id, node in zip(ids, nodes, strict=True):
        session = moderation.lobby.sessions.get(session_id) if node is None else None
        if node is None and (session is None or session.peer is None):
            raise web.HTTPNotFound(text=f"no media from session {session_id}")
        if session is not None and session.peer is not None:
            watched.append(session.peer)
    # Gathered like the users' own connections: same ICE servers, same addresses.
    watcher = Watcher(_who(request), moderation.lobby.relay.settings)
    try:
        for index, (session_id, node) in enumerate(zip(ids, nodes, strict=True)):
            if node is not None:
                # Someone on another node: their media comes here through the pipe,
                # until the watcher closes (however it closes).
                remote = _remote(request)
                feed = await remote.open(node, session_id, "watch")
                watcher.on_close(functools.partial(remote.release, feed))
                watched.insert(index, feed)
        answer = await watcher.answer(sdp, watched)
    except RemoteFeedError as exc:
        await watcher.close()
        raise _refused(exc) from None
    except PeerError as exc:
        await watcher.close()
        raise web.HTTPBadRequest(text=exc.message) from None
    except BaseException:
        await watcher.close()
        raise
    request.app[WATCHERS][watcher.id] = watcher
    targets = (f"session:{i}" + (f"@{n}" if n else "") for i, n in zip(ids, nodes, strict=True))
    await _audit(request, "watch", ",".join(targets), watcher.id)
    logger.info("%r started", watcher)
    return web.json_response({"watchId": watcher.id, "sdp": answer})


def follow_new_media(app: web.Application) -> None:
    """Moderators' watchers go on with a watched person's new media connection."""
    watchers = app[WATCHERS]

    def follow(session_id: str, peer: Peer) -> None:
        for watcher in watchers.values():
            if session_id in watcher.watched:
                watcher.follow(peer)

    app[MODERATION].media_listeners.append(follow)


async def stop_watching(request: web.Request) -> web.Response:
    watcher = request.app[WATCHERS].pop(request.match_info["id"], None)
    if watcher is None:
        raise web.HTTPNotFound()
    await watcher.close()
    await _audit(request, "stop_watching", ",".join(watcher.watched), watcher.id)
    return web.json_response({"stopped": watcher.id})


async def _close_events(app: web.Application) -> None:
    if MODERATION in app:
        app[MODERATION].events.close()


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
