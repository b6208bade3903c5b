"""A headless chat client: real WebRTC media over the signalling protocol.

:class:`ChatClient` speaks ``docs/protocol.md`` with an aiortc peer connection.
It sends stamped synthetic video (:mod:`rtc.stamp`) and a sine tone, decodes
whatever the partner sends and keeps the numbers a test or a benchmark checks:
which partner's frames arrived, in order or not, how late, and which tone is
heard. Run ``python -m rtc.client --help`` to test a deployment from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import itertools
import json
import random
import socket
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from rtc import aiortc_seam
from rtc.stamp import Stamp, draw_video_frame, luma, read_stamp

__all__ = ["ChatClient", "ReceivedFrame", "SignallingError", "main"]

Message = dict[str, Any]

VIDEO_CLOCK_RATE = 90_000
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms, what Opus packs into one packet
# Bounds on what a long benchmark run keeps in memory.
ICE_TCP_CHOICES = ("no", "also", "only")
MAX_FRAMES_KEPT = 10_000
MAX_LATENCIES_KEPT = 10_000
# 160 ms of audio: enough for a 6 Hz FFT resolution, short enough that the
# peak follows a partner change quickly.
AUDIO_FRAMES_FOR_PEAK = 8
# The peak is only meaningful while audio flows.
AUDIO_STALE_SECONDS = 1.0
# An s16 peak below this is silence, not a tone.
AUDIO_SILENCE = 100
# The server answers within milliseconds; this only bounds a broken server.
ANSWER_TIMEOUT = 10.0
# Error codes by which the server refuses or ends a visit (docs/protocol.md).
REFUSALS = frozenset(
    {"banned", "kicked", "too_many_sessions", "too_many_new_sessions", "too_many_peers"}
)
# Exit codes of the command line (also in its --help).
EXIT_OK, EXIT_NO_VIDEO, EXIT_FAILED, EXIT_REFUSED, EXIT_RESUME_FAILED = 0, 1, 2, 3, 4
# Seconds between progress lines when stderr is not a terminal (on one it is redrawn each second).
PROGRESS_EVERY = 5.0


@dataclass
class ReceivedFrame:
    """One decoded video frame: when it arrived and what its stamp says."""

    recv_time: float
    """``time.time()`` when the decoded frame reached the client."""
    stamp: Stamp | None
    """The sender's stamp, or ``None`` for video that is not stamped."""
    media_time: float | None = None
    """The frame's RTP timestamp in seconds as this client's receiver saw it
    (counted from the first frame), so a test can check the stream the server
    sends is continuous."""


class SignallingError(Exception):
    """The server answered a request with an ``error`` message."""

    def __init__(self, message: Message) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message


class _Pacer:
    """Hands out frame slots at a steady rate, sleeping until each one is due."""

    def __init__(self, rate: float, *, skip_when_behind: bool) -> None:
        self._rate = rate
        self._skip = skip_when_behind
        self._slot = 0
        self._start: float | None = None

    async def next_slot(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return 0
        self._slot += 1
        delay = self._start + self._slot / self._rate - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif self._skip and delay < -1 / self._rate:
            # Behind schedule (a busy machine): skip the missed slots rather
            # than burst, so pts keep following the wall clock.
            self._slot = int((now - self._start) * self._rate)
        return self._slot


class StampedVideoTrack(MediaStreamTrack):
    """Stamped synthetic video (:func:`rtc.stamp.draw_video_frame`) at a steady rate."""

    kind = "video"

    def __init__(
        self,
        tag: int,
        width: int,
        height: int,
        fps: int,
        first_counter: int = 0,
        start: asyncio.Future[int] | None = None,
    ) -> None:
        super().__init__()
        # With `start`, no frame until it resolves, to the counter to go on from (a
        # connection that takes over from another one, see ChatClient.negotiate).
        self._start = start
        self._tag = tag
        self._width = width
        self._height = height
        self._fps = fps
        self.counter = first_counter
        """The counter the next frame will carry."""
        self._pacer = _Pacer(fps, skip_when_behind=True)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is not None:
            self.counter = await self._start
            self._start = None
        slot = await self._pacer.next_slot()
        stamp = Stamp(self._tag, self.counter % (1 << 32), int(time.time() * 1000))
        self.counter += 1
        frame = draw_video_frame(stamp, self._width, self._height)
        frame.pts = slot * VIDEO_CLOCK_RATE // self._fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A continuous sine tone: 48 kHz mono s16 in 20 ms frames."""

    kind = "audio"

    def __init__(self, tone_hz: float) -> None:
        super().__init__()
        self._step = 2 * np.pi * tone_hz / AUDIO_RATE
        self._ramp = np.arange(AUDIO_SAMPLES, dtype=np.float64) * self._step
        # Audio never skips: a gap in samples would be heard as a click.
        self._pacer = _Pacer(AUDIO_RATE / AUDIO_SAMPLES, skip_when_behind=False)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        sample = await self._pacer.next_slot() * AUDIO_SAMPLES
        phase = (sample * self._step) % (2 * np.pi)
        samples = (8000 * np.sin(phase + self._ramp)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = sample
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


@dataclass
class _MatchEvent:
    """One ``matched``: when, and whose frames were arriving just before."""

    matched_at: float
    previous_tag: int | None
    next_sent_at: float | None
    first_frame_at: float | None = None
    tag: int | None = None


@dataclass
class _FrameWaiter:
    tag: int | None
    after: float
    count: int
    done: asyncio.Future[None]
    frames: list[ReceivedFrame] = field(default_factory=list)

    def offer(self, frame: ReceivedFrame) -> None:
        if frame.recv_time < self.after:
            return
        if self.tag is not None and (frame.stamp is None or frame.stamp.tag != self.tag):
            return
        self.frames.append(frame)
        if len(self.frames) >= self.count and not self.done.done():
            self.done.set_result(None)


async def _connected(pc: RTCPeerConnection, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until `pc` is connected; TimeoutError after `timeout` seconds."""
    connected = asyncio.Event()

    def check() -> None:
        if pc.connectionState == "connected":
            connected.set()

    pc.on("connectionstatechange", check)
    check()
    async with asyncio.timeout(timeout):
        await connected.wait()


def _codec_preferences(kind: str, name: str) -> list[Any]:
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    wanted = f"{kind}/{name}".lower()
    chosen = [c for c in capabilities if c.mimeType.lower() == wanted]
    if not chosen:
        names = sorted({c.mimeType.split("/")[1] for c in capabilities} - {"rtx"})
        raise ValueError(f"unknown {kind} codec {name!r}; aiortc offers {', '.join(names)}")
    # Keep retransmissions for the chosen codec.
    return chosen + [c for c in capabilities if c.mimeType.lower() == f"{kind}/rtx"]


class ChatClient:
    """One visitor: a WebSocket to the server plus one media connection.

    ``tag`` goes into every video stamp this client sends, so a partner can tell
    whose frames it receives. Use as ``async with ChatClient(url, tag=1) as c``
    or call :meth:`connect` and :meth:`close` yourself.

    What it observed is kept on the instance: ``hello`` and ``id`` (from the
    first message), ``messages`` (every server message, in order),
    ``close_code`` (set when the server closes the WebSocket), ``frames`` (the
    last :data:`MAX_FRAMES_KEPT` decoded video frames), ``audio_frames`` and
    :attr:`audio_peak_hz`; :meth:`summary` has the running totals.
    """

    def __init__(
        self,
        url: str,
        *,
        tag: int,
        width: int = 320,
        height: int = 240,
        fps: int = 15,
        tone_hz: float = 440.0,
        media_file: str | None = None,
        video_codec: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ice_tcp: str = "no",
    ) -> None:
        if not 0 <= tag < 1 << 16:
            raise ValueError(f"tag {tag} is not a 16-bit number")
        self.url = url
        self.tag = tag
        self.width = width
        self.height = height
        self.fps = fps
        self.tone_hz = tone_hz
        self.media_file = media_file
        # ICE over TCP (RFC 6544 active): "also" offers it besides UDP, as browsers
        # do; "only" offers nothing else (a client that cannot send UDP at all).
        if ice_tcp not in ICE_TCP_CHOICES:
            raise ValueError(f"ice_tcp must be one of {', '.join(ICE_TCP_CHOICES)}")
        self.ice_tcp = ice_tcp
        # For wss:// with a certificate of your own CA (a staging proxy, tests/test_nginx.py).
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._video_preferences = (
            _codec_preferences("video", video_codec) if video_codec is not None else None
        )

        self.hello: Message = {}
        self.id = ""
        # The token that resumes this session after its WebSocket drops (rotates on each resume).
        self.resume_token: str | None = None
        self.messages: list[Message] = []
        self.close_code: int | None = None
        self.frames: deque[ReceivedFrame] = deque(maxlen=MAX_FRAMES_KEPT)
        self.audio_frames = 0

        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._local_tracks: list[MediaStreamTrack] = []
        self._stamped_video: StampedVideoTrack | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._ws_done = False

        self._consumed: set[int] = set()
        self._messages_changed = asyncio.Condition()

        self._frame_waiters: list[_FrameWaiter] = []
        self._frames_received = 0
        self._frames_stamped = 0
        self._frames_per_tag: Counter[int] = Counter()
        self._last_counter: dict[int, int] = {}
        self._counter_regressions = 0
        self._frames_missing = 0
        self._latencies_ms: deque[float] = deque(maxlen=MAX_LATENCIES_KEPT)
        self._partner_tag: int | None = None
        self._matches: list[_MatchEvent] = []
        self._last_next_at: float | None = None
        self._next_presses = 0

        self._audio_recent: deque[npt.NDArray[np.int16]] = deque(maxlen=AUDIO_FRAMES_FOR_PEAK)
        self._last_audio_at = 0.0

    # -- lifecycle -----------------------------------------------------------

    @property
    def pc(self) -> RTCPeerConnection:
        """The media connection, once :meth:`negotiate` (or :meth:`connect`) has run."""
        if self._pc is None:
            raise RuntimeError("not connected")
        return self._pc

    async def __aenter__(self) -> ChatClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket, read ``hello``, then set up media (:meth:`negotiate`).

        Raises :class:`SignallingError` if the server rejects the offer.
        """
        await self.connect_signalling()
        await self.negotiate()

    async def connect_signalling(self) -> None:
        """Open the WebSocket and read ``hello``; no media yet."""
        if self._session is not None:
            raise RuntimeError("already connected")
        self._session = aiohttp.ClientSession()
        self.hello = await self._open_socket()
        self.id = str(self.hello.get("id", ""))

    async def _open_socket(self) -> Message:
        """A new WebSocket on the session; its `hello`, or SignallingError for a refusal."""
        assert self._session is not None
        self._ws = await self._session.ws_connect(self.url, ssl=self._ssl)
        self._ws_done = False
        since = len(self.messages)
        self._spawn(self._read_messages(self._ws))
        # A refused visitor (banned, over a limit) gets one error instead of hello.
        first = await self._take(
            lambda m: (
                m.get("type") == "hello" or (m.get("type") == "error" and m.get("code") in REFUSALS)
            ),
            what="hello",
            since=since,
        )
        if first["type"] == "error":
            raise SignallingError(first)
        return first

    async def drop_socket(self) -> None:
        """Cut the WebSocket with no closing handshake, as a network change or a proxy does.

        The server holds the session for its resume grace; :meth:`resume` takes it back.
        """
        ws = self._ws
        if ws is None:
            raise RuntimeError("not connected")
        sock = ws.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await ws.close()
        async with self._messages_changed:
            while not self._ws_done:
                await self._messages_changed.wait()

    async def resume(self, timeout: float = ANSWER_TIMEOUT) -> Message:  # noqa: ASYNC109
        """Open a new WebSocket and take the session over: the server's ``resumed``.

        Raises :class:`SignallingError` when the server refuses the token.
        """
        if self.resume_token is None:
            raise RuntimeError("the server gave no resume token (is --resume-grace 0?)")
        token = self.resume_token
        if self._session is None:
            # A client given a token only (another process's session, a test).
            self._session = aiohttp.ClientSession()
        async with asyncio.timeout(timeout):
            await self._open_socket()
            await self.send({"type": "resume", "token": token})
            reply = await self._take(
                lambda m: (
                    m.get("type") == "resumed"
                    or (m.get("type") == "error" and m.get("inReplyTo") == "resume")
                ),
                what="resumed",
            )
        if reply["type"] == "error":
            raise SignallingError(reply)
        if isinstance(reply.get("iceServers"), list):
            # Fresh (TURN) credentials for the next media connection.
            self.hello = {**self.hello, "iceServers": reply["iceServers"]}
        return reply

    async def negotiate(self, *, keep_old: bool = False) -> None:
        """Create the media connection: offer, wait for the answer, apply it.

        Calling it again replaces the media connection with a new one, which is
        how a client recovers after a ``media_lost`` error or a network change.
        With ``keep_old`` the old connection keeps sending until the new one is
        connected (make before break, as the page does); then the new one's video
        goes on from the old one's counter. Raises :class:`SignallingError` if the
        server rejects the offer.
        """
        old_pc, old_tracks, old_video = self._pc, self._local_tracks, self._stamped_video
        handover: asyncio.Future[int] | None = None
        if keep_old and old_pc is not None:
            handover = asyncio.get_running_loop().create_future()
            self._pc, self._local_tracks = None, []
        else:
            await self._close_media()
        ice_servers = [
            RTCIceServer(
                urls=server["urls"],
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in self.hello.get("iceServers", [])
        ]
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        pc.on("track", self._on_track)
        audio, video = self._make_tracks(handover)
        pc.addTrack(audio)
        pc.addTrack(video)
        if self._video_preferences is not None:
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(self._video_preferences)

        if self.ice_tcp != "no":
            aiortc_seam.use_active_tcp(pc, only=self.ice_tcp == "only")
        # aiortc gathers every ICE candidate inside setLocalDescription, so the
        # offer is complete and nothing needs trickling.
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})
        async with asyncio.timeout(ANSWER_TIMEOUT):
            reply = await self._take(
                lambda m: (
                    m.get("type") == "answer"
                    or (m.get("type") == "error" and m.get("inReplyTo") == "offer")
                ),
                what="answer",
            )
        if reply["type"] == "error":
            raise SignallingError(reply)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        if handover is not None and old_pc is not None:
            try:
                await _connected(pc, ANSWER_TIMEOUT)
            finally:
                for track in old_tracks:
                    track.stop()
                handover.set_result(old_video.counter if old_video is not None else 0)
                await old_pc.close()

    def _make_tracks(
        self, handover: asyncio.Future[int] | None = None
    ) -> tuple[MediaStreamTrack, MediaStreamTrack]:
        audio: MediaStreamTrack | None = None
        video: MediaStreamTrack | None = None
        if self.media_file is not None:
            # The player stops reading the file once both its tracks are stopped.
            player = MediaPlayer(self.media_file, loop=True)
            audio, video = player.audio, player.video
        # The protocol needs both m-lines: a file without one kind gets the
        # synthetic source for it.
        if audio is None:
            audio = ToneAudioTrack(self.tone_hz)
        if video is None:
            # A new media connection continues the count: to a partner it is
            # still the same sender, whose frames must stay in order.
            video = self._stamped_video = StampedVideoTrack(
                self.tag,
                self.width,
                self.height,
                self.fps,
                first_counter=self._stamped_video.counter if self._stamped_video else 0,
                start=handover,
            )
        self._local_tracks = [audio, video]
        return audio, video

    async def close(self) -> None:
        """Close media, WebSocket and session and end every task; idempotent."""
        if self._closed:
            return
        self._closed = True
        # The WebSocket first: a goodbye (1000) ends the session at once, where media
        # closing first would look like a network change and hold the pair for a resume.
        if self._ws is not None:
            await self._ws.close()
            if self.close_code is None:
                self.close_code = self._ws.close_code
        await self._close_media()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        for waiter in self._frame_waiters:
            waiter.done.cancel()

    async def _close_media(self) -> None:
        # Closing the connection ends the remote tracks, which ends their readers.
        for track in self._local_tracks:
            track.stop()
        self._local_tracks = []
        if self._pc is not None:
            await self._pc.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- signalling ----------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one JSON object as a text frame."""
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) frame as is."""
        if self._ws is None:
            raise RuntimeError("not connected")
        if isinstance(data, bytes):
            await self._ws.send_bytes(data)
        else:
            await self._ws.send_str(data)

    async def start(self, interests: Sequence[str] = (), *, mode: str = "video") -> None:
        """Ask for a partner; the server answers ``waiting`` then ``matched``.

        ``mode="text"`` is a text-only search: no media connection is needed (use
        :meth:`connect_signalling`), and the partner is text-only too.
        """
        message: Message = {"type": "start"}
        if interests:
            message["interests"] = list(interests)
        if mode != "video":
            message["mode"] = mode
        await self.send(message)

    async def next(self) -> None:
        """Leave the current partner and look for another."""
        self._last_next_at = time.time()
        self._next_presses += 1
        await self.send({"type": "next"})

    async def stop(self) -> None:
        """Leave the current partner or stop waiting."""
        await self.send({"type": "stop"})

    async def chat(self, text: str) -> None:
        """Send a chat line to the partner."""
        await self.send({"type": "chat", "text": text})

    async def wait_for(
        self,
        type: str,
        timeout: float | None = 10.0,  # noqa: ASYNC109 - the one knob every test sets
        predicate: Callable[[Message], bool] | None = None,
    ) -> Message:
        """The oldest server message of ``type`` no earlier call has returned.

        Messages that arrived before the call count, so there is no race with a
        fast server. Raises ``TimeoutError`` after ``timeout`` seconds (``None``:
        wait forever) and ``ConnectionError`` if the WebSocket closes first.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._take(
                    lambda m: m.get("type") == type and (predicate is None or predicate(m)),
                    what=type,
                )
        except TimeoutError:
            seen = [m.get("type") for m in self.messages[-10:]]
            raise TimeoutError(f"no {type!r} within {timeout} s; last messages: {seen}") from None

    async def _take(
        self, match: Callable[[Message], bool], *, what: str, since: int = 0
    ) -> Message:
        """Consume the oldest unconsumed message from index ``since`` on that ``match`` accepts."""

        def find() -> Message | None:
            for index, message in enumerate(self.messages):
                if index >= since and index not in self._consumed and match(message):
                    self._consumed.add(index)
                    return message
            return None

        async with self._messages_changed:
            while (found := find()) is None:
                if self._ws_done:
                    raise ConnectionError(
                        f"WebSocket closed (code {self.close_code}) before {what!r}"
                    )
                await self._messages_changed.wait()
            return found

    async def _read_messages(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                self._on_message(message)
                async with self._messages_changed:
                    self.messages.append(message)
                    self._messages_changed.notify_all()
        finally:
            if ws is self._ws:
                self.close_code = ws.close_code
                self._ws_done = True
            async with self._messages_changed:
                self._messages_changed.notify_all()

    def _on_message(self, message: Message) -> None:
        if message.get("type") in ("hello", "resumed") and isinstance(
            message.get("resumeToken"), str
        ):
            self.resume_token = message["resumeToken"]
        if message.get("type") == "matched":
            # A `next` counts for this match only if no match came after it.
            previous = self._matches[-1].matched_at if self._matches else 0.0
            next_at = self._last_next_at
            self._matches.append(
                _MatchEvent(
                    matched_at=time.time(),
                    previous_tag=self._partner_tag,
                    next_sent_at=next_at if next_at is not None and next_at > previous else None,
                )
            )
            # Counter gaps between two pairings are frames nobody forwarded, not losses.
            self._last_counter.clear()

    # -- media ---------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._consume_video(track))
        elif track.kind == "audio":
            self._spawn(self._consume_audio(track))

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.VideoFrame)
            media_time = (
                float(frame.pts * frame.time_base)
                if frame.pts is not None and frame.time_base
                else None
            )
            self._record_frame(ReceivedFrame(time.time(), read_stamp(luma(frame)), media_time))

    def _record_frame(self, frame: ReceivedFrame) -> None:
        self.frames.append(frame)
        self._frames_received += 1
        stamp = frame.stamp
        if stamp is not None:
            self._frames_stamped += 1
            self._frames_per_tag[stamp.tag] += 1
            self._latencies_ms.append(frame.recv_time * 1000 - stamp.send_time_ms)
            last = self._last_counter.get(stamp.tag)
            if last is not None:
                if stamp.counter <= last:
                    self._counter_regressions += 1
                else:
                    self._frames_missing += stamp.counter - last - 1
            self._last_counter[stamp.tag] = stamp.counter
            self._partner_tag = stamp.tag
        if self._matches:
            match = self._matches[-1]
            # Tags tell the new partner's first frame from the old one's last;
            # unstamped video (a browser, a file) can only be timed by arrival.
            if (
                match.first_frame_at is None
                and frame.recv_time >= match.matched_at
                and (stamp is None or stamp.tag != match.previous_tag)
            ):
                match.first_frame_at = frame.recv_time
                match.tag = None if stamp is None else stamp.tag
        for waiter in self._frame_waiters:
            waiter.offer(frame)

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            samples = np.asarray(frame.to_ndarray(), dtype=np.int16)
            # Packed stereo interleaves channels in one row; the first is enough.
            channels = 1 if frame.format.is_planar else len(frame.layout.channels)
            self._audio_recent.append(samples[0, ::channels])
            self.audio_frames += 1
            self._last_audio_at = time.time()

    @property
    def audio_peak_hz(self) -> float | None:
        """Dominant frequency of the last ~160 ms of received audio.

        ``None`` before any audio, when audio stopped arriving over a second
        ago, or when it is silence.
        """
        if not self._audio_recent or time.time() - self._last_audio_at > AUDIO_STALE_SECONDS:
            return None
        samples = np.concatenate(self._audio_recent).astype(np.float64)
        if np.abs(samples).max() < AUDIO_SILENCE:
            return None
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        spectrum[0] = 0
        peak = int(np.argmax(spectrum))
        # Parabolic interpolation between neighbouring bins: ~1 Hz precision
        # instead of the 6 Hz bin width.
        offset = 0.0
        if 0 < peak < len(spectrum) - 1:
            left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-9)
            denominator = left - 2 * centre + right
            if denominator != 0:
                offset = 0.5 * (left - right) / denominator
        return float((peak + offset) * AUDIO_RATE / len(samples))

    async def wait_frames(
        self,
        *,
        tag: int | None = None,
        count: int = 1,
        after: float | None = None,
        timeout: float = 15.0,  # noqa: ASYNC109 - see wait_for
    ) -> list[ReceivedFrame]:
        """Wait for ``count`` decoded frames with ``recv_time >= after``.

        With ``tag``, only frames whose stamp carries that tag count; without,
        every decoded frame counts, stamped or not. Frames already received
        (and still in :attr:`frames`) count too. Raises ``TimeoutError``.
        """
        waiter = _FrameWaiter(
            tag=tag,
            after=after if after is not None else 0.0,
            count=count,
            done=asyncio.get_running_loop().create_future(),
        )
        for frame in self.frames:
            waiter.offer(frame)
        if waiter.done.done():
            return waiter.frames[:count]
        self._frame_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.done, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(waiter.frames)} of {count} frames (tag {tag}) within {timeout} s; "
                f"tags seen: {dict(self._frames_per_tag)}"
            ) from None
        finally:
            self._frame_waiters.remove(waiter)
        return waiter.frames[:count]

    def largest_gap(self, tag: int, after: float) -> tuple[int, float]:
        """The longest pause in ``tag``'s stamped video since ``after`` (the frame
        just before counts): (frames that never arrived, milliseconds)."""
        mine = [f for f in self.frames if f.stamp is not None and f.stamp.tag == tag]
        start = next((i for i, f in enumerate(mine) if f.recv_time >= after), len(mine))
        frames_missing, ms = 0, 0.0
        for before, now in itertools.pairwise(mine[max(0, start - 1) :]):
            assert before.stamp is not None and now.stamp is not None
            frames_missing = max(frames_missing, now.stamp.counter - before.stamp.counter - 1)
            ms = max(ms, (now.recv_time - before.recv_time) * 1000)
        return frames_missing, ms

    def progress(self) -> str:
        """One line on how the visit goes so far (the command line prints it while it runs)."""
        latencies = np.array(self._latencies_ms)
        latency = f"p50 {np.percentile(latencies, 50):.0f} ms" if len(latencies) else "-"
        matched = f"yes ({len(self._matches)}x)" if self._matches else "no"
        return (
            f"matched {matched} | frames {self._frames_received} "
            f"({self._frames_stamped} stamped) | latency {latency}"
        )

    def refusal(self) -> Message | None:
        """The server's error when it banned, kicked or refused this client, if it did."""
        for message in reversed(self.messages):
            if message.get("type") == "error" and message.get("code") in REFUSALS:
                return message
        return None

    # -- results -------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What arrived so far, as plain JSON-ready values.

        ``content_ok`` is true when stamped frames arrived and each sender's
        counters only ever increased (frames in order, none repeated).
        Latencies compare the sender's and this machine's clocks: they mean
        something only on one machine or with synchronised clocks.
        """
        latencies = np.array(self._latencies_ms)
        first_match = self._matches[0] if self._matches else None
        return {
            "id": self.id,
            "tag": self.tag,
            "matched": bool(self._matches),
            "matches": len(self._matches),
            "frames_received": self._frames_received,
            "frames_stamped": self._frames_stamped,
            "frames_per_tag": {str(tag): n for tag, n in sorted(self._frames_per_tag.items())},
            "frames_missing": self._frames_missing,
            "counter_regressions": self._counter_regressions,
            "content_ok": self._frames_stamped > 0 and self._counter_regressions == 0,
            "latency_ms": (
                {
                    "p50": round(float(np.percentile(latencies, 50)), 1),
                    "p95": round(float(np.percentile(latencies, 95)), 1),
                }
                if len(latencies)
                else None
            ),
            "first_frame_after_matched_s": (
                _seconds(first_match.matched_at, first_match.first_frame_at)
                if first_match
                else None
            ),
            "next_presses": self._next_presses,
            "switches": [
                {
                    "next_to_first_frame_s": _seconds(match.next_sent_at, match.first_frame_at),
                    "matched_to_first_frame_s": _seconds(match.matched_at, match.first_frame_at),
                    "tag": match.tag,
                }
                for match in self._matches
                if match.next_sent_at is not None
            ],
            "audio_frames": self.audio_frames,
            "audio_peak_hz": _rounded(self.audio_peak_hz),
            "close_code": self.close_code,
        }


def _seconds(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- command line ------------------------------------------------------------


EPILOG = f"""exit codes:
  {EXIT_OK}  video frames arrived (and, with --resume-test, the session was resumed)
  {EXIT_NO_VIDEO}  connected, but no video frame arrived (nobody to pair with, or media blocked)
  {EXIT_FAILED}  could not connect, or the server failed a request (the error is printed)
  {EXIT_REFUSED}  the server refused this client: banned, kicked or over a per-address
     limit (its reason is printed)
  {EXIT_RESUME_FAILED}  --resume-test: the session could not be resumed, or the partner was lost

A progress line goes to stderr while it runs; the summary to stdout at the end."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rtc.client",
        description="Join a Roulette Relay server as a headless visitor and report what arrives.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--url",
        default="ws://127.0.0.1:8080/ws",
        help="the signalling WebSocket: ws://HOST:PORT/ws, or wss://HOST/ws behind TLS",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stay")
    parser.add_argument("--interests", default="", help="comma-separated, e.g. music,chess")
    parser.add_argument("--width", type=int, default=320, help="video width")
    parser.add_argument("--height", type=int, default=240, help="video height")
    parser.add_argument("--fps", type=int, default=15, help="video frames per second")
    parser.add_argument("--tone", type=float, default=440.0, help="sine tone to send, Hz")
    parser.add_argument("--media", metavar="FILE", help="send this file instead (looped)")
    parser.add_argument("--codec", help="offer only this video codec, e.g. VP8 or H264")
    parser.add_argument("--tag", type=int, help="16-bit id stamped on our video (default random)")
    parser.add_argument(
        "--next-every", type=float, metavar="S", help="press next every S seconds once matched"
    )
    parser.add_argument(
        "--resume-test",
        action="store_true",
        help="halfway through a call, cut the WebSocket (no closing handshake) and resume "
        "the session on a new one: checks that a proxy or load balancer in front lets a "
        "visitor keep their partner",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    return parser.parse_args(argv)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the exit codes laid out as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, ""):
            return action.help  # nothing worth showing
        return super()._get_help_string(action)


def url_problem(url: str) -> str | None:
    """A hint when `url` cannot be the signalling WebSocket, or None."""
    scheme, _, rest = url.partition("://")
    if scheme in ("http", "https"):
        ws = "wss" if scheme == "https" else "ws"
        host = rest.split("/", 1)[0]
        return f"{url} is a web page address; the chat's WebSocket is {ws}://{host}/ws"
    if scheme not in ("ws", "wss") or not rest:
        return f"{url} is not a WebSocket URL; expected ws://HOST:PORT/ws or wss://HOST/ws"
    return None


async def _print_progress(client: ChatClient, stream: Any) -> None:
    tty = stream.isatty()
    while True:
        await asyncio.sleep(1.0 if tty else PROGRESS_EVERY)
        if tty:
            stream.write("\r\033[K" + client.progress())
        else:
            stream.write(client.progress() + "\n")
        stream.flush()


async def _resume_test(client: ChatClient, seconds: float) -> dict[str, Any]:
    """Cut the WebSocket mid-call, resume, and say whether the partner and the video stayed."""
    try:
        await client.wait_for("matched", timeout=seconds)
        await client.wait_frames(count=5, after=time.time(), timeout=seconds)
    except TimeoutError:
        return {"ok": False, "error": "no partner's video to test a resume with"}
    tag = next((f.stamp.tag for f in reversed(client.frames) if f.stamp is not None), None)
    cut_at = time.time()
    await client.drop_socket()
    try:
        resumed = await client.resume()
    except (SignallingError, OSError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        return {"ok": False, "error": f"resume refused or failed: {exc}"}
    resume_ms = (time.time() - cut_at) * 1000
    result: dict[str, Any] = {"ok": resumed.get("state") == "paired", "ms": round(resume_ms)}
    if not result["ok"]:
        result["error"] = f"resumed, but the partner was lost (state {resumed.get('state')})"
        return result
    if resumed.get("media") is False:
        # The balancer sent the resume to another node of a cluster: the session moved
        # there, and a new media connection is made there, as the page does.
        result["moved"] = True
        try:
            await client.negotiate()
        except (SignallingError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            return result | {"ok": False, "error": f"resumed, but no new media connection: {exc}"}
    try:
        await client.wait_frames(tag=tag, count=10, after=time.time(), timeout=10)
    except TimeoutError:
        return result | {"ok": False, "error": "resumed, but the partner's video stopped"}
    if tag is not None:
        frames, ms = client.largest_gap(tag, cut_at)
        result |= {"gap_frames": frames, "gap_ms": round(ms)}
    return result


async def _visit(args: argparse.Namespace) -> dict[str, Any]:
    interests = [i.strip() for i in args.interests.split(",") if i.strip()]
    client = ChatClient(
        args.url,
        tag=args.tag if args.tag is not None else random.randrange(1 << 16),
        width=args.width,
        height=args.height,
        fps=args.fps,
        tone_hz=args.tone,
        media_file=args.media,
        video_codec=args.codec,
    )

    async def stay_in_pool() -> None:
        # A partner who leaves makes us idle; a visitor on this tool wants the next one.
        while True:
            await client.wait_for("partner_left", timeout=None)
            await client.start(interests)

    async with client:
        await client.start(interests)
        rejoin = asyncio.create_task(stay_in_pool())
        progress = None if args.quiet else asyncio.create_task(_print_progress(client, sys.stderr))
        resume: dict[str, Any] | None = None
        try:
            deadline = time.monotonic() + args.seconds
            if args.resume_test:
                resume = await _resume_test(client, args.seconds / 2)
            if args.next_every:
                with contextlib.suppress(TimeoutError):
                    await client.wait_for("matched", timeout=args.seconds)
                while deadline - time.monotonic() > args.next_every:
                    await asyncio.sleep(args.next_every)
                    await client.next()
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            for task in (rejoin, progress):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await task
            if progress is not None and sys.stderr.isatty():
                sys.stderr.write("\n")
        summary = client.summary()
        refusal = client.refusal()
        if refusal is not None:
            summary["refused"] = refusal
        if resume is not None:
            summary["resume"] = resume
        return summary


def _describe(summary: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    latency = summary["latency_ms"]
    lines = [
        f"id {summary['id']}, tag {summary['tag']}",
        f"matched:            {'yes' if summary['matched'] else 'no'} ({summary['matches']}x)",
        f"frames received:    {summary['frames_received']} "
        f"({summary['frames_stamped']} stamped, {summary['frames_missing']} missing)",
        f"per partner tag:    {summary['frames_per_tag'] or '-'}",
        "content check:      "
        + (
            "not possible (no stamped frames)"
            if not summary["frames_stamped"]
            else f"{'ok' if summary['content_ok'] else 'FAILED'} "
            f"({summary['counter_regressions']} out-of-order or repeated frames)"
        ),
        "latency:            "
        + (f"p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms" if latency else "-"),
        f"first frame:        {ms(summary['first_frame_after_matched_s'])} after matched",
        f"audio:              {summary['audio_frames']} frames, peak "
        + ("-" if summary["audio_peak_hz"] is None else f"{summary['audio_peak_hz']:.0f} Hz"),
    ]
    resume = summary.get("resume")
    if resume is not None:
        if resume["ok"]:
            gap = (
                f", largest gap {resume['gap_frames']} frames ({resume['gap_ms']} ms)"
                if "gap_frames" in resume
                else ""
            )
            lines.append(f"resume test:        ok, resumed in {resume['ms']} ms{gap}")
        else:
            lines.append(f"resume test:        FAILED: {resume['error']}")
    if summary["next_presses"]:
        lines.append(
            f"next pressed:       {summary['next_presses']}x, "
            f"{len(summary['switches'])} led to a new partner"
        )
    for index, switch in enumerate(summary["switches"], 1):
        lines.append(
            f"  switch #{index}:        first frame of tag {switch['tag']} "
            f"{ms(switch['next_to_first_frame_s'])} after next"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one visit from the command line; the exit codes are in EPILOG."""
    args = _parse_args(argv)
    problem = url_problem(args.url)
    if problem is not None:
        print(f"failed: {problem}", file=sys.stderr)
        return EXIT_FAILED
    try:
        summary = asyncio.run(_visit(args))
    except SignallingError as e:
        if e.message.get("code") in REFUSALS:
            print(f"refused: {_refusal_text(e.message)}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except aiohttp.WSServerHandshakeError as e:
        hint = " (is the path /ws?)" if e.status == 404 else ""
        print(
            f"failed: the server did not open a WebSocket: HTTP {e.status}{hint}", file=sys.stderr
        )
        return EXIT_FAILED
    except (OSError, aiohttp.ClientError, TimeoutError, ConnectionError) as e:
        print(f"failed: {e or type(e).__name__}", file=sys.stderr)
        return EXIT_FAILED
    print(_describe(summary))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
            file.write("\n")
    if "refused" in summary:
        print(f"refused: {_refusal_text(summary['refused'])}", file=sys.stderr)
        return EXIT_REFUSED
    if "resume" in summary and not summary["resume"]["ok"]:
        return EXIT_RESUME_FAILED
    return EXIT_OK if summary["frames_received"] else EXIT_NO_VIDEO


def _refusal_text(error: Message) -> str:
    """The server's words for a refusal, with a ban's reason and end when it gave them."""
    text = f"{error.get('code')}: {error.get('message')}"
    if error.get("reason") and str(error["reason"]) not in text:
        text += f" (reason: {error['reason']})"
    return text


if __name__ == "__main__":
    sys.exit(main())
