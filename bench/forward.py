"""The server's CPU per forwarded packet, without the rest of the relay: `python -m bench.forward`.

Four real aiortc peer connections on loopback, as bench.relay's pair has them:
browser A -> server_in (a Publisher on its receiver, `receive_packets`) and
server_out (a Subscriber feeding the real PacketSender) -> browser B. A sends
a few real VP8 frames; those packets are then replayed, renumbered, two ways:

- `inbound_us`: CPU per packet for a datagram sealed with A's own SRTP keys,
  sent to server_in's socket, read by the event loop, decrypted, parsed,
  counted by aiortc's statistics/NACK generator and handed to the Publisher
  (no subscriber attached).
- `send_us`: CPU per packet for the Publisher's fan-out to one Subscriber and
  PacketSender.send (header, SRTP, sendto(2) to B), called back to back.

B takes packets the way the relay does (`receive_packets`: decrypt, parse,
nothing decoded) but reads none during the `send_us` loop, which does not
yield, so only the server's work is counted there. The packet path is the one RR_PACKET_PATH chooses
(`auto`: native if built); run with RR_PACKET_PATH=python for the other.
Process CPU time, so a busy machine slows it less than wall time; still,
compare runs made side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame
from av.frame import Frame

from rtc import aiortc_seam, packet_path
from rtc.publisher import Publisher
from rtc.rtp import RtpView
from rtc.subscriber import Subscriber

FRAMES = 60


class _FewFrames(VideoStreamTrack):
    """A's camera: FRAMES frames, then nothing (so its encoder costs nothing later)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> Frame:
        self.count += 1
        if self.count > FRAMES:
            await asyncio.Event().wait()
        return await super().recv()


class _Silent(MediaStreamTrack):
    kind = "video"

    async def recv(self) -> VideoFrame:
        await asyncio.Event().wait()
        raise AssertionError


class _Recorder:
    def __init__(self) -> None:
        self.views: list[RtpView] = []

    def push_packet(self, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool) -> None:
        self.views.append(view)

    def detach(self) -> None:
        pass


async def _until(predicate, limit: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 (a benchmark polls)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), limit)


def _replay(views: list[RtpView], count: int, first_sequence: int) -> list[RtpView]:
    """`count` packets cycling through `views`, numbered on from `first_sequence`."""
    out = []
    step = 3000
    for index in range(count):
        view = views[index % len(views)]
        turn = index // len(views)
        out.append(
            RtpView(
                view.ssrc,
                view.payload_type,
                (first_sequence + index) & 0xFFFF,
                (view.timestamp + turn * step * len(views)) & 0xFFFFFFFF,
                view.marker,
                view.payload,
            )
        )
    return out


async def run(packets: int, burst: int) -> dict[str, float | str | int]:
    a, server_in = RTCPeerConnection(), RTCPeerConnection()
    server_out, b = RTCPeerConnection(), RTCPeerConnection()
    publisher: Publisher | None = None
    try:
        a_sender = a.addTrack(_FewFrames())
        await a.setLocalDescription(await a.createOffer())
        await server_in.setRemoteDescription(a.localDescription)
        receiver = server_in.getTransceivers()[0].receiver
        await server_in.setLocalDescription(await server_in.createAnswer())
        publisher = Publisher("bench", "video", receiver, keyframe_interval=0.0)
        publisher.start_receiving()
        recorder = _Recorder()
        publisher.add_subscriber(recorder)

        sender = server_out.addTrack(_Silent())
        output = aiortc_seam.PacketSender(sender)
        await server_out.setLocalDescription(await server_out.createOffer())
        await b.setRemoteDescription(server_out.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        # B takes packets as the relay does (decrypt and parse, nothing decoded).
        aiortc_seam.receive_packets(b.getTransceivers()[0].receiver, lambda codec, view: None)
        await server_out.setRemoteDescription(b.localDescription)
        await a.setRemoteDescription(server_in.localDescription)
        await _until(lambda: output.ready and len(recorder.views) >= 30)
        await asyncio.sleep(FRAMES / 30 + 0.5)  # A's last frames
        publisher.remove_subscriber(recorder)
        views = list(recorder.views)
        codec = publisher.codec
        assert codec is not None

        # Inbound: sealed with A's keys, sent to server_in's socket from another socket.
        keys = aiortc_seam.srtp_key_material(a_sender.transport)
        assert keys is not None
        profile, a_key, _ = keys
        # A stamps abs-send-time on its video as browsers do (the relay's REMB estimate
        # runs on it): its id as negotiated, its time the frame's RTP time.
        abs_id = next(
            int(line.split()[0].split(":")[1])
            for line in a.localDescription.sdp.splitlines()
            if line.startswith("a=extmap:") and line.endswith("/abs-send-time")
        )
        seal = rtp_sealer(profile, a_key, abs_id)
        selected = aiortc_seam.selected_pair(server_in)
        assert selected is not None
        target = (selected[0].host, selected[0].port)
        spray = socket.socket(
            socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        spray.setblocking(False)
        replay = _replay(views, packets, views[-1].sequence_number + 1)
        datagrams = [seal(view) for view in replay]
        start_bytes = publisher.bytes
        expected = start_bytes
        cpu = time.process_time()
        for index in range(0, len(datagrams), burst):
            chunk = datagrams[index : index + burst]
            for data in chunk:
                spray.sendto(data, target)
            expected += sum(len(v.payload) for v in replay[index : index + burst])
            # The event loop reads them (one loop turn per burst, as with a busy server).
            await _until(lambda goal=expected: publisher.bytes >= goal, 5.0)  # type: ignore[misc]
        inbound_us = (time.process_time() - cpu) / len(datagrams) * 1e6
        spray.close()

        # Send: the fan-out and PacketSender, back to back, in bursts.
        subscriber = Subscriber("s", "video")
        subscriber.set_codec(codec, lambda: None)
        subscriber.set_output(output)
        subscriber.attach(publisher)
        replay = _replay(views, packets, replay[-1].sequence_number + 1)
        on_packet = publisher._on_packet
        before = output.packets
        cpu = time.process_time()
        # Without yielding: B reads nothing meanwhile (its socket fills and the
        # kernel drops the rest), so this is the server's sending alone.
        for view in replay:
            on_packet(codec, view)
        send_us = (time.process_time() - cpu) / len(replay) * 1e6
        sent = output.packets - before
        subscriber.detach()
        return {
            "packet_path": packet_path.name(),
            "packets": packets,
            "inbound_us": round(inbound_us, 2),
            "send_us": round(send_us, 2),
            "total_us": round(inbound_us + send_us, 2),
            "sent": sent,
        }
    finally:
        if publisher is not None:
            await publisher.close()
        for pc in (a, server_in, server_out, b):
            await pc.close()


def rtp_sealer(profile: int, key: bytes, abs_id: int):  # type: ignore[no-untyped-def]
    context = packet_path.srtp_context(profile, key, True)
    if context is None:
        import pylibsrtp

        policy = pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
        )
        session = pylibsrtp.Session(policy=policy)
        protect: Callable[[bytes], bytes | None] = session.protect
    else:
        protect = context.protect

    def seal(view: RtpView) -> bytes:
        header = struct.pack(
            "!BBHII",
            0x90,  # with a header extension
            (0x80 if view.marker else 0) | view.payload_type,
            view.sequence_number,
            view.timestamp,
            view.ssrc,
        )
        # abs-send-time (6.18 fixed-point seconds) from the RTP clock, one-byte form.
        send_time = (view.timestamp * (1 << 18) // 90_000) & 0xFFFFFF
        extension = struct.pack("!HHB", 0xBEDE, 1, abs_id << 4 | 2) + send_time.to_bytes(3)
        data = protect(header + extension + view.payload)
        assert data is not None
        return data

    return seal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--burst", type=int, default=20, help="packets per event-loop turn")
    parser.add_argument("--runs", type=int, default=3, help="report the best of this many")
    args = parser.parse_args()
    results = [asyncio.run(run(args.packets, args.burst)) for _ in range(args.runs)]
    best = min(results, key=lambda r: float(r["total_us"]))
    print(json.dumps({"runs": results, "best": best}, indent=1))


if __name__ == "__main__":
    main()
