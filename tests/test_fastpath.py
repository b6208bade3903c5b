"""rtc/_fastpath.c against what the Python path does, byte for byte, and under garbage.

The reference is the Python packet path itself: pylibsrtp (libsrtp, the
library aiortc's own sessions use) for SRTP, and rtc.rtp's header writer, VP8
picture-id rewrite and RTX payload for the rest. Same keys, same packets: the
two must send the same bytes and read each other's. `make asan` runs this file
against a build with AddressSanitizer.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import itertools
import os
import random
import socket
import struct
from collections.abc import Callable
from fractions import Fraction
from types import ModuleType

import av
import numpy as np
import pylibsrtp
import pytest
from aiortc.codecs import depayload, get_encoder
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import TimestampMapper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc import rtp
from rtc.media import FrameAssembler


def _load() -> ModuleType:
    """The built module, or the one RR_FASTPATH_MODULE names (`make asan`'s own build)."""
    path = os.environ.get("RR_FASTPATH_MODULE")
    if not path:
        from rtc import _fastpath

        return _fastpath
    spec = importlib.util.spec_from_file_location("rtc._fastpath", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fastpath = _load()

PROFILES = {
    "aes-256-gcm": (_fastpath.PROFILE_AEAD_AES_256_GCM, 44),
    "aes-128-gcm": (_fastpath.PROFILE_AEAD_AES_128_GCM, 28),
    "aes-cm-hmac-sha1-80": (_fastpath.PROFILE_AES128_CM_SHA1_80, 30),
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def libsrtp(profile: int, key: bytes, outbound: bool) -> pylibsrtp.Session:
    """A pylibsrtp session configured exactly as aiortc's `_setup_srtp` does."""
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        if outbound
        else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def rtp_packet(rng: random.Random, ssrc: int, seq: int, timestamp: int) -> bytes:
    """A plaintext RTP packet with what browsers put in: CSRCs, one-byte and two-byte
    extensions, padding, a marker, payloads from empty to MTU-sized."""
    csrcs = rng.choice([0, 0, 0, 1, 3])
    extension = b""
    if rng.random() < 0.7:
        profile = rng.choice([0xBEDE, 0x1000])
        body = bytes(rng.randrange(256) for _ in range(4 * rng.randrange(0, 4)))
        extension = struct.pack("!HH", profile, len(body) // 4) + body
    padding = rng.choice([0, 0, 0, 1, 4, 17])
    first = 0x80 | csrcs | (0x10 if extension else 0) | (0x20 if padding else 0)
    second = (0x80 if rng.random() < 0.2 else 0) | rng.choice([96, 97, 111])
    payload = os.urandom(rng.choice([0, 1, 13, 200, 1100]))
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return (
        struct.pack("!BBHII", first, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        + os.urandom(4 * csrcs)
        + extension
        + payload
        + tail
    )


@pytest.mark.parametrize("name", PROFILES)
def test_srtp_is_the_same_bytes_as_libsrtp_both_ways(name: str) -> None:
    """Several SSRCs (media and RTX), sequence numbers across the 16-bit wrap (the
    rollover counter), retransmissions of a sequence number already sent."""
    profile, size = PROFILES[name]
    rng = random.Random(name)
    key = os.urandom(size)
    ours_tx, ours_rx = (
        _fastpath.SrtpContext(profile, key, True),
        _fastpath.SrtpContext(profile, key, False),
    )
    ref_tx, ref_rx = libsrtp(profile, key, True), libsrtp(profile, key, False)
    streams = {ssrc: rng.randrange(65536 - 300, 65536) for ssrc in (11, 22, 33)}
    for count in range(1500):
        ssrc = rng.choice(list(streams))
        seq = streams[ssrc]
        first_sending = rng.random() >= 0.05
        if first_sending:
            streams[ssrc] += 1
        else:
            seq -= rng.randrange(1, 200)  # a retransmission without RTX: sent again
        plain = rtp_packet(rng, ssrc, seq, count * 3000)
        sealed = ours_tx.protect(plain)
        assert sealed == ref_tx.protect(plain), f"packet {count} differs"
        assert sealed is not None
        if first_sending:  # both receivers take it (a repeat is a replay to them)
            assert ours_rx.unprotect(sealed) == plain
            assert ref_rx.unprotect(sealed) == plain


@pytest.mark.parametrize("name", PROFILES)
def test_the_replay_window_takes_what_libsrtp_takes(name: str) -> None:
    """Duplicates, late packets within 1024, and ones older than that: accepted and
    refused exactly where libsrtp (as aiortc configures it) accepts and refuses."""
    profile, size = PROFILES[name]
    rng = random.Random(1)
    key = os.urandom(size)
    tx = libsrtp(profile, key, True)
    ours, ref = _fastpath.SrtpContext(profile, key, False), libsrtp(profile, key, False)
    sent = []
    for seq in range(3000):
        sent.append(tx.protect(rtp_packet(rng, 5, (60000 + seq), seq)))
    order = list(range(3000))
    for _ in range(400):  # swap neighbours, and throw in old and repeated ones
        i = rng.randrange(2999)
        order[i], order[i + 1] = order[i + 1], order[i]
    for _ in range(300):
        at = rng.randrange(len(order))
        order.insert(at, max(0, order[at] - rng.choice([1, 5, 600, 1023, 1024, 1025, 2000])))
    for index in order:
        try:
            expected: bytes | None = ref.unprotect(sent[index])
        except pylibsrtp.Error:
            expected = None
        assert ours.unprotect(sent[index]) == expected, f"packet {index}"


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize(
    "extensions", [(None, None, None), ("0", 4, 2), ("video", 1, 14), ("a" * 17, 15, 3)]
)
def test_a_sealed_packet_is_what_the_python_path_sends(
    name: str, extensions: tuple[str | None, int | None, int | None]
) -> None:
    """HeaderWriter.seal == rtc.rtp.HeaderWriter + picture id rewrite + RTX payload + libsrtp:
    the same datagram, for VP8 with 7- and 15-bit picture ids, without one, and Opus."""
    profile, size = PROFILES[name]
    mid, mid_id, abs_id = extensions
    rng = random.Random(f"{name}{extensions}")
    key = os.urandom(size)
    ours_tx = _fastpath.SrtpContext(profile, key, True)
    ref_tx = libsrtp(profile, key, True)
    native = _fastpath.HeaderWriter(1234, mid, mid_id, abs_id)
    python = rtp.HeaderWriter(1234, mid, mid_id, abs_id)
    payloads = [
        bytes([0x90, 0x80, 0x80 | 0x12, 0x34]) + os.urandom(900),  # 15-bit picture id
        bytes([0x90, 0x80, 0x45]) + os.urandom(300),  # 7-bit picture id
        bytes([0x10]) + os.urandom(50),  # no extensions
        bytes([0x90, 0x80, 0x80]),  # 15-bit id cut short: left alone
        b"",
        os.urandom(120),  # Opus
    ]
    for seq in range(65500, 65500 + 200):
        payload = rng.choice(payloads)
        picture_id = rng.choice([-1, 0, 127, 300, 0x7FFF])
        rtx = rng.choice([-1, -1, rng.randrange(65536)])
        marker = rng.random() < 0.3
        ntp = rng.getrandbits(64)
        timestamp = rng.getrandbits(32)
        body = payload if picture_id < 0 else rtp.with_vp8_picture_id(payload, picture_id)
        if rtx >= 0:
            body = rtp.rtx_payload(rtx, body)
        expected = ref_tx.protect(python.header(97, seq & 0xFFFF, timestamp, marker, ntp) + body)
        got = native.seal(
            ours_tx, 97, seq & 0xFFFF, timestamp, marker, ntp, payload, picture_id, rtx
        )
        assert got == expected


def test_bad_setup_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="unknown SRTP profile 99"):
        _fastpath.SrtpContext(99, bytes(30), True)
    with pytest.raises(ValueError, match="needs 44 bytes"):
        _fastpath.SrtpContext(_fastpath.PROFILE_AEAD_AES_256_GCM, bytes(30), True)
    inbound = _fastpath.SrtpContext(_fastpath.PROFILE_AES128_CM_SHA1_80, bytes(30), False)
    outbound = _fastpath.SrtpContext(_fastpath.PROFILE_AES128_CM_SHA1_80, bytes(30), True)
    with pytest.raises(ValueError, match="cannot protect"):
        inbound.protect(bytes(20))
    with pytest.raises(ValueError, match="cannot unprotect"):
        outbound.unprotect(bytes(40))
    writer = _fastpath.HeaderWriter(1, None, None, None)
    with pytest.raises(TypeError, match="SrtpContext"):
        writer.seal(object(), 96, 1, 1, False, 0, b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot protect"):
        writer.seal(inbound, 96, 1, 1, False, 0, b"")


def test_more_ssrcs_than_a_connection_has_are_refused_not_remembered() -> None:
    key = os.urandom(44)
    profile = _fastpath.PROFILE_AEAD_AES_256_GCM
    tx, rx = _fastpath.SrtpContext(profile, key, True), _fastpath.SrtpContext(profile, key, False)
    packets = [tx.protect(struct.pack("!BBHII", 0x80, 96, 1, 0, ssrc) + b"x") for ssrc in range(40)]
    assert all(packet is not None for packet in packets[:32])
    assert all(packet is None for packet in packets[32:])
    assert [rx.unprotect(packet) is not None for packet in packets[:32]] == [True] * 32


# -- fuzz: nothing malformed crashes or reads out of bounds (see `make asan`) ------------


@pytest.fixture(scope="module")
def contexts() -> dict[str, tuple[_fastpath.SrtpContext, _fastpath.SrtpContext]]:
    made = {}
    for name, (profile, size) in PROFILES.items():
        key = bytes(range(size))
        made[name] = (
            _fastpath.SrtpContext(profile, key, True),
            _fastpath.SrtpContext(profile, key, False),
        )
    return made


@FUZZ
@given(data=st.binary(max_size=1600))
def test_garbage_is_refused(contexts, data: bytes) -> None:
    for tx, rx in contexts.values():
        assert rx.unprotect(data) is None, "random bytes never authenticate"
        tx.protect(data)


@FUZZ
@given(
    first=st.integers(0, 255),
    second=st.integers(0, 255),
    seq=st.integers(0, 65535),
    extension_words=st.integers(0, 0xFFFF),
    body=st.binary(max_size=300),
    flip=st.integers(0, 2000),
)
def test_headers_that_lie_about_their_length_are_refused(
    contexts, first: int, second: int, seq: int, extension_words: int, body: bytes, flip: int
) -> None:
    """RTP-looking packets whose CSRC count or extension length run past the end, sealed
    for real (so authentication passes where the header is sound) and then damaged."""
    header = struct.pack("!BBHII", first, second, seq, 7, 99)
    packet = header + struct.pack("!HH", 0xBEDE, extension_words) + body
    for tx, rx in contexts.values():
        sealed = tx.protect(packet)
        if sealed is None:  # not RTP, or the header runs past the end: nothing to protect
            continue
        damaged = bytearray(sealed)
        damaged[flip % len(damaged)] ^= 0x01
        assert rx.unprotect(bytes(damaged)) is None, "a damaged packet never authenticates"
        assert rx.unprotect(sealed) in (None, packet)


@settings(FUZZ, max_examples=120)
@given(
    payload=st.binary(max_size=2000),
    payload_type=st.integers(-5, 300),
    seq=st.integers(-70000, 70000),
    timestamp=st.integers(-(2**40), 2**40),
    ntp=st.integers(0, 2**64 - 1),
    picture_id=st.integers(-3, 0x10000),
    original=st.integers(-3, 0x10000),
    mid=st.one_of(st.none(), st.text(max_size=20)),
    ids=st.tuples(
        st.one_of(st.none(), st.integers(-1, 20)), st.one_of(st.none(), st.integers(-1, 20))
    ),
)
def test_any_arguments_make_a_packet_or_a_clear_error(
    contexts,
    payload: bytes,
    payload_type: int,
    seq: int,
    timestamp: int,
    ntp: int,
    picture_id: int,
    original: int,
    mid: str | None,
    ids: tuple[int | None, int | None],
) -> None:
    writer = _fastpath.HeaderWriter(5, mid, *ids)
    for tx, rx in contexts.values():
        sealed = writer.seal(
            tx, payload_type, seq, timestamp, False, ntp, payload, picture_id, original
        )
        assert sealed is not None
        plain = rx.unprotect(sealed)
        if plain is not None:  # a repeated sequence number is a replay to the receiver
            view = rtp.parse(plain)
            assert view is not None and view.ssrc == 5


@pytest.mark.parametrize("family", ["127.0.0.1", "::1"])
def test_send_puts_on_the_wire_what_seal_returns(family: str) -> None:
    """HeaderWriter.send (seal and sendto(2) in one call) sends the bytes seal() makes."""
    import socket

    key = os.urandom(44)
    profile = _fastpath.PROFILE_AEAD_AES_256_GCM
    receiver = socket.socket(
        socket.AF_INET6 if ":" in family else socket.AF_INET, socket.SOCK_DGRAM
    )
    sender = socket.socket(receiver.family, socket.SOCK_DGRAM)
    try:
        receiver.bind((family, 0))
        receiver.settimeout(5)
        destination = _fastpath.Destination(sender.fileno(), family, receiver.getsockname()[1])
        writer = _fastpath.HeaderWriter(77, "1", 4, 2)
        by_seal = _fastpath.SrtpContext(profile, key, True)
        by_send = _fastpath.SrtpContext(profile, key, True)
        for seq in range(20):
            payload = bytes([0x90, 0x80, 0x80, seq]) + os.urandom(seq * 50)
            args = (96, seq, seq * 3000, seq % 3 == 0, seq << 20, payload, 1000 + seq)
            assert writer.send(destination, by_send, *args) == 0
            assert receiver.recv(2048) == writer.seal(by_seal, *args)
        # Nothing protectable (too large): nothing sent, and said so.
        assert writer.send(destination, by_send, 96, 1, 1, False, 0, bytes(20000)) == -1
    finally:
        receiver.close()
        sender.close()
    with pytest.raises(ValueError, match="not a numeric"):
        _fastpath.Destination(0, "example.org", 1)
    with pytest.raises(ValueError, match="out of range"):
        _fastpath.Destination(0, "127.0.0.1", 70000)


# -- frame assembly (rtc/native/frames.c) against rtc.media.FrameAssembler -------------

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
# (payload, sequence number, RTP timestamp, marker): one packet as the relay receives it.
Packet = tuple[bytes, int, int, bool]
Frame = tuple[int, bytes, int, bool]  # the packet that completed it, bytes, timestamp, keyframe


def assemble_both(packets: list[Packet], video: bool) -> list[Frame]:
    """Feeds the Python and the C assembler the same packets: the same frames must come
    out at the same packets, with the same incomplete count. The C returns the RTP
    timestamp; mapped here once per frame, as the Python caller of the C would."""
    codec = VP8 if video else OPUS
    python = FrameAssembler(video)
    native = _fastpath.FrameAssembler(video, True)
    mapper = TimestampMapper()
    expected: list[Frame] = []
    got: list[Frame] = []
    for index, (payload, sequence, timestamp, marker) in enumerate(packets):
        view = rtp.RtpView(1, codec.payloadType, sequence, timestamp, marker, payload)
        frame = python.add(codec, view)
        if frame is not None:
            expected.append((index, frame.data, frame.timestamp, frame.keyframe))
        built = native.add(payload, sequence, timestamp, marker)
        if built is not None:
            data, rtp_timestamp, keyframe = built
            assert len(data) <= _fastpath.FRAME_MAX_SIZE
            got.append((index, data, mapper.map(rtp_timestamp), keyframe))
    assert got == expected
    assert native.incomplete == python.incomplete
    return got


@functools.cache
def vp8_frames() -> list[list[bytes]]:
    """Real VP8 from aiortc's encoder (libvpx through PyAV), packetized as aiortc sends it:
    descriptors with 15-bit picture ids. Noise takes several packets per frame, a still
    picture's inter frames one; frame 7 is a forced keyframe."""
    encoder = get_encoder(VP8)
    rng = np.random.default_rng(14)
    still = np.full((240, 320, 3), 90, dtype=np.uint8)
    out = []
    for index in range(12):
        noisy = index < 3 or index in (7, 10)
        picture = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) if noisy else still
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = index * 3000
        frame.time_base = Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=index == 7)
        out.append(payloads)
    return out


def vp8_stream(
    first_sequence: int = 65500, first_timestamp: int = 2**32 - 4 * 3000
) -> list[Packet]:
    """The frames as packets, across the 16-bit sequence wrap and the 32-bit timestamp wrap."""
    packets = []
    sequence = first_sequence
    for index, payloads in enumerate(vp8_frames()):
        timestamp = (first_timestamp + index * 3000) & 0xFFFFFFFF
        for position, payload in enumerate(payloads):
            packets.append((payload, sequence & 0xFFFF, timestamp, position == len(payloads) - 1))
            sequence += 1
    return packets


def opus_stream(rng: random.Random, count: int = 120) -> list[Packet]:
    """Opus-like packets: 20 ms each (960 ticks), 3 to 250 bytes, marker on the first."""
    return [
        (
            os.urandom(rng.randrange(3, 250)),
            (65480 + i) & 0xFFFF,
            (2**32 - 960 * 50 + 960 * i) & 0xFFFFFFFF,
            i == 0,
        )
        for i in range(count)
    ]


MALFORMED_VP8 = [
    b"",
    b"\x80",  # X set, no extension byte
    b"\x80\x80",  # I set, no picture id
    b"\x80\x80\x80",  # 15-bit picture id cut short
    b"\x80\xf0\x80\x01\x02",  # every extension, nothing behind them
    b"\x90",  # a descriptor only
    b"\x10\x00",  # one byte of a keyframe's frame tag
    b"\x10\x01",  # one byte of an inter frame's
]


def damage(packets: list[Packet], rng: random.Random, kind: str) -> list[Packet]:
    """What the network and hostile publishers do to a stream."""
    out: list[Packet] = []
    for packet in packets:
        payload, sequence, timestamp, marker = packet
        if kind in ("loss", "all") and rng.random() < 0.1:
            continue
        if kind in ("no-marker", "all") and marker and rng.random() < 0.3:
            packet = (payload, sequence, timestamp, False)
        if kind in ("timestamp", "all") and rng.random() < 0.05:
            packet = (payload, sequence, (timestamp + 1500) & 0xFFFFFFFF, marker)
        if kind in ("malformed", "all") and rng.random() < 0.1:
            packet = (rng.choice(MALFORMED_VP8), sequence, timestamp, marker)
        out.append(packet)
        if kind in ("duplicates", "all") and rng.random() < 0.1:
            out.append(packet)
        if kind in ("reorder", "all") and len(out) > 2 and rng.random() < 0.1:
            out[-1], out[-2] = out[-2], out[-1]
        if kind in ("late", "all") and len(out) > 20 and rng.random() < 0.05:
            out.append(out[-rng.randrange(2, 20)])  # a retransmission, after the fact
    if kind == "jump" and len(out) > 10:  # the publisher's sequence numbers restart elsewhere
        cut = len(out) // 2
        out[cut:] = [(p, (s + 0x9000) & 0xFFFF, t, m) for p, s, t, m in out[cut:]]
    return out


def test_real_vp8_frames_come_out_whole_and_the_same_as_python() -> None:
    frames = assemble_both(vp8_stream(), video=True)
    expected = [b"".join(depayload(VP8, p) for p in payloads) for payloads in vp8_frames()]
    assert [data for _, data, _, _ in frames] == expected
    assert [timestamp for _, _, timestamp, _ in frames] == [i * 3000 for i in range(12)]
    keyframes = [index for index, (_, _, _, keyframe) in enumerate(frames) if keyframe]
    assert keyframes == [0, 7]
    assert any(len(payloads) == 1 for payloads in vp8_frames())
    assert any(len(payloads) > 3 for payloads in vp8_frames())


DAMAGE = [
    "loss",
    "duplicates",
    "reorder",
    "late",
    "no-marker",
    "timestamp",
    "malformed",
    "jump",
    "all",
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_vp8_gives_the_same_frames_as_python(kind: str, seed: int) -> None:
    rng = random.Random(f"{kind}/{seed}")
    assemble_both(damage(vp8_stream(rng.randrange(65536)), rng, kind), video=True)


@pytest.mark.parametrize("kind", ["clean", *DAMAGE])
def test_audio_is_every_packet_as_it_came(kind: str) -> None:
    rng = random.Random(kind)
    packets = damage(opus_stream(rng), rng, kind)
    packets[5] = (b"", *packets[5][1:])
    frames = assemble_both(packets, video=False)
    assert [data for _, data, _, _ in frames] == [p for p, _, _, _ in packets]
    assert all(keyframe for _, _, _, keyframe in frames)


def test_loss_is_counted_and_repaired_at_the_next_whole_frame() -> None:
    """The rules themselves, on the real stream: a lost middle packet loses that frame
    only; a whole frame lost leaves the next one whole (its start bit shows)."""
    packets = vp8_stream()
    lengths = [len(payloads) for payloads in vp8_frames()]
    middle = lengths[0] + 1
    frames = assemble_both(packets[:middle] + packets[middle + 1 :], video=True)
    assert len(frames) == 11
    second = slice(lengths[0], lengths[0] + lengths[1])
    frames = assemble_both(packets[: second.start] + packets[second.stop :], video=True)
    assert len(frames) == 11
    native = _fastpath.FrameAssembler(True, True)
    for packet in packets[:middle] + packets[middle + 1 :]:
        native.add(*packet)
    assert native.incomplete == 1


def test_only_vp8_video_and_audio_are_assembled_in_c() -> None:
    """rr_frames_new gives NULL for other video codecs (H264): Python assembles those."""
    with pytest.raises(ValueError, match="VP8"):
        _fastpath.FrameAssembler(True, False)
    assert _fastpath.FrameAssembler(False, False).add(b"x", 1, 2, False) == (b"x", 2, True)
    assert _fastpath.FrameAssembler(False, True).add(b"", 1, 2, True) == (b"", 2, True)


def test_a_frame_over_the_cap_is_given_up_and_the_next_comes_through() -> None:
    """No frame grows memory past FRAME_MAX_SIZE: one that would is incomplete (the one
    place the C differs from Python, which would keep it); one of exactly the cap is kept."""
    cap = _fastpath.FRAME_MAX_SIZE
    native = _fastpath.FrameAssembler(True, True)
    chunk = 1200

    def frame(size: int, sequence: int, timestamp: int, marker: bool = True) -> list[Packet]:
        body = bytes([0x00]) + os.urandom(size - 1)  # a keyframe tag, then anything
        parts = [body[i : i + chunk] for i in range(0, size, chunk)]
        return [
            (
                bytes([0x10 if i == 0 else 0x00]) + part,
                (sequence + i) & 0xFFFF,
                timestamp,
                marker and i == len(parts) - 1,
            )
            for i, part in enumerate(parts)
        ]

    exact = frame(cap, 0, 1000)
    built = [native.add(*p) for p in exact]
    assert built[:-1] == [None] * (len(exact) - 1)
    assert built[-1] == (b"".join(p[0][1:] for p in exact), 1000, True)
    sequence = len(exact)
    for size in (cap + 1, 3 * cap):
        over = frame(size, sequence, 2000 + size)
        assert all(native.add(*p) is None for p in over)
        sequence += len(over)
    assert native.incomplete == 2
    # Never a marker, three caps' worth: given up when the next frame starts.
    endless = frame(3 * cap, sequence, 9000, marker=False)
    assert all(native.add(*p) is None for p in endless)
    sequence += len(endless)
    small = frame(500, sequence, 12000)
    assert native.add(*small[0]) == (small[0][0][1:], 12000, True)
    assert native.incomplete == 3
    # Audio too (RTP cannot carry such a packet; a Python caller could).
    audio = _fastpath.FrameAssembler(False, False)
    assert audio.add(bytes(cap + 1), 1, 1, True) is None and audio.incomplete == 1
    assert audio.add(bytes(cap), 2, 2, True) == (bytes(cap), 2, True)


VP8_DESCRIPTOR_BYTES = st.sampled_from([0x00, 0x10, 0x80, 0x90, 0x91, 0x08, 0x17])
EXTENSIONS = st.sampled_from([0x00, 0x80, 0x40, 0x20, 0x10, 0xF0, 0xC0, 0xFF])


@st.composite
def vp8_packets(draw: st.DrawFn) -> list[Packet]:
    """Sequences of VP8-looking packets near each other in sequence and time: descriptors
    of every shape (cut anywhere), markers anywhere, repeats, gaps, going backwards."""
    packets = []
    sequence = draw(st.integers(0, 65535))
    timestamp = draw(st.integers(0, 2**32 - 1))
    for _ in range(draw(st.integers(0, 60))):
        sequence = (
            sequence + draw(st.sampled_from([1, 1, 1, 1, 0, 2, 3, -1, -5, 0x8000, 0x8001]))
        ) & 0xFFFF
        timestamp = (timestamp + draw(st.sampled_from([0, 0, 0, 3000, -3000, 1]))) & 0xFFFFFFFF
        head = bytes([draw(VP8_DESCRIPTOR_BYTES), draw(EXTENSIONS)])
        payload = (head + draw(st.binary(max_size=8)))[: draw(st.integers(0, 10))]
        packets.append((payload, sequence, timestamp, draw(st.booleans())))
    return packets


@FUZZ
@given(packets=vp8_packets())
def test_random_vp8_packets_give_the_same_frames_as_python(packets: list[Packet]) -> None:
    assemble_both(packets, video=True)
    assemble_both(packets, video=False)


@settings(FUZZ, max_examples=200)
@given(
    video=st.booleans(),
    vp8=st.booleans(),
    payload=st.one_of(
        st.binary(max_size=40), st.text(max_size=3), st.none(), st.just(bytearray(b"\x90"))
    ),
    sequence=st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 65535), st.floats(), st.none()),
    timestamp=st.one_of(
        st.integers(-(2**70), 2**70), st.integers(0, 2**32 - 1), st.text(max_size=2)
    ),
    marker=st.one_of(st.booleans(), st.integers(), st.none()),
)
def test_any_arguments_make_a_frame_nothing_or_a_clear_error(
    video: bool, vp8: bool, payload: object, sequence: object, timestamp: object, marker: object
) -> None:
    try:
        native = _fastpath.FrameAssembler(video, vp8)
    except ValueError:
        assert video and not vp8
        return
    for _ in range(2):
        with contextlib.suppress(TypeError, ValueError):
            native.add(payload, sequence, timestamp, marker)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.add(b"", 1, 2)  # type: ignore[call-arg]


# -- Lane and Fanout (rtc/native/fanout.c) against Subscriber + PacketSender ----------


class _Clock:
    """loop.time() and time.time() for both paths at once: the Python one reads it
    (Subscriber's loop, rtp.ntp_now), the native one is frozen to it."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = 1_700_000_000.0
        self._set()

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds
        self._set()

    def _set(self) -> None:
        _fastpath.freeze_clock(self.monotonic, self.wall)

    def time(self) -> float:
        return self.monotonic


class _Wire:
    """What one sender put on the wire, sealed with its own copy of the keys; `full`
    holds the transmit calls (counted from 0) the socket refuses."""

    def __init__(self, profile: int, key: bytes, full: set[int]) -> None:
        self.sent: list[bytes] = []
        self.calls = 0
        self._full = full
        self._tx = _fastpath.SrtpContext(profile, key, True)

    def _accept(self) -> bool:
        call, self.calls = self.calls, self.calls + 1
        return call not in self._full

    def plain(self, data: bytes) -> bool:
        """The Python path's transmit: seal as its SRTP session would."""
        if not self._accept():
            return False
        sealed = self._tx.protect(data)
        assert sealed is not None
        self.sent.append(sealed)
        return True

    def sealed(self, data: bytes) -> bool:
        """The lane's transmit: it sealed already."""
        if not self._accept():
            return False
        self.sent.append(data)
        return True


async def _pair_of_paths(kind: str, full: set[int], rtx: bool):  # type: ignore[no-untyped-def]
    """The same subscriber twice: the Python Subscriber+PacketSender, and the same
    classes on a Lane and Fanout, with the same keys and starting numbers."""
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    from rtc import aiortc_seam, packet_path
    from rtc.source import PacketSource
    from rtc.subscriber import Subscriber

    class Source(PacketSource):
        def _ask_upstream(self) -> None:
            pass

    profile = _fastpath.PROFILE_AEAD_AES_128_GCM
    key = os.urandom(28)
    pc = RTCPeerConnection()
    codec = _codec(kind)
    sides = []
    previous = packet_path.name()
    packet_path.select("python")
    try:
        for native in (False, True):
            track = VideoStreamTrack() if kind == "video" else AudioStreamTrack()
            sender = aiortc_seam.PacketSender(pc.addTrack(track))
            wire = _Wire(profile, key, full)
            sender.payload_type = 96
            sender._sequence_number = 65500
            sender._rtx_sequence_number = 65530
            sender._rtx_payload_type = 97 if rtx else None
            sender._writer = rtp.HeaderWriter(4242, "1", 4, 2)
            sender._rtx_writer = rtp.HeaderWriter(4343, "1", 4, 2)
            sender._transmit = wire.plain  # type: ignore[method-assign]
            sender.ready = True
            if native:
                lane = _fastpath.Lane()
                lane.sequence_number = 65500
                lane.rtx_sequence_number = 65530
                lane.configure(
                    _fastpath.HeaderWriter(4242, "1", 4, 2),
                    _fastpath.HeaderWriter(4343, "1", 4, 2),
                    _fastpath.SrtpContext(profile, key, True),
                    96,
                    97 if rtx else None,
                    wire.sealed,
                )
                lane.ready = True
                sender.lane = lane
            subscriber = Subscriber("s", kind)
            subscriber.set_output(sender)
            subscriber.set_codec(codec, lambda: None)
            sources = [Source(name, kind, keyframe_interval=0.0) for name in ("a", "b")]
            for source in sources:
                source.native_fanout = _fastpath.Fanout() if native else None
                if native:
                    source.native_fanout.on_frames = source._on_native_frames
            sides.append((subscriber, sender, sources, wire))
    finally:
        packet_path.select(previous)
    return codec, sides, pc


def _codec(kind: str):  # type: ignore[no-untyped-def]
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    if kind == "video":
        return RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    return RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)


def _vp8_frame(
    rng: random.Random, picture_id: int, seq: int, ts: int, key: bool, count: int, bits: int
) -> list[rtp.RtpView]:
    views = []
    for index in range(count):
        if bits == 15:
            descriptor = bytes(
                [
                    0x90 if index == 0 else 0x80,
                    0x80,
                    0x80 | picture_id >> 8 & 0x7F,
                    picture_id & 0xFF,
                ]
            )
        elif bits == 7:
            descriptor = bytes([0x90 if index == 0 else 0x80, 0x80, picture_id & 0x7F])
        else:
            descriptor = bytes([0x10 if index == 0 else 0x00])
        body = (b"\x00" if key else b"\x01") if index == 0 else b""
        body += os.urandom(rng.choice([1, 40, 900]))
        views.append(
            rtp.RtpView(
                1,
                96,
                (seq + index) & 0xFFFF,
                ts & 0xFFFFFFFF,
                index == count - 1,
                descriptor + body,
            )
        )
    return views


@pytest.mark.parametrize("seed", range(24))
async def test_a_lane_sends_the_bytes_subscriber_and_packet_sender_send(seed: int) -> None:
    """Partner switches, loss, reordering, both wraps, keyframe gating, a full socket,
    holds, re-encoded frames and NACKs: the same packets in, the same bytes out."""
    from rtc import aiortc_seam

    rng = random.Random(seed)
    kind = "video" if seed % 4 else "audio"
    full = {rng.randrange(400) for _ in range(rng.choice([0, 3, 10]))}
    rtx = seed % 3 != 0
    clock = _Clock()
    codec, sides, pc = await _pair_of_paths(kind, full, rtx)
    # Per side and source: audio frames the C builds reach Python in batches, so
    # only each source's own order is the same.
    frames: list[list[list[tuple[bytes, int, bool]]]] = [[[], []], [[], []]]
    try:
        for index, (subscriber, _, sources, _) in enumerate(sides):
            subscriber._event_loop = clock  # type: ignore[assignment]
            for source in sources:
                source._loop = clock  # type: ignore[assignment]
            subscriber.attach(sources[0])
            for number, source in enumerate(sources):
                source.add_frame_listener(
                    lambda f, i=index, n=number: frames[i][n].append(
                        (f.data, f.timestamp, f.keyframe)
                    )
                )
        original_ntp = rtp.ntp_now
        rtp.ntp_now = lambda: int((clock.wall + rtp.NTP_UNIX_OFFSET) * 4294967296.0)
        # Each partner's own numbering, near the wraps.
        state = [
            {
                "seq": rng.choice([65530, 100, 30000]),
                "ts": rng.choice([2**32 - 9000, 5]),
                "pid": rng.choice([32760, 120, 5]),
                "bits": rng.choice([15, 15, 7, 0]),
            }
            for _ in range(2)
        ]
        current = 0
        for _step in range(60):
            clock.advance(rng.choice([0.0, 0.001, 1 / 30, 0.2]))
            action = rng.random()
            if action < 0.08:
                current = 1 - current
                for subscriber, _, sources, _ in sides:
                    subscriber.attach(sources[current])
                continue
            if action < 0.12:
                held = not sides[0][2][current].held
                for _, _, sources, _ in sides:
                    sources[current].hold(held)
                continue
            if action < 0.18:
                payload = os.urandom(rng.choice([10, 300]))
                ts = rng.randrange(2**32)
                results = [sender.send(payload, True, ts) for _, sender, _, _ in sides]
                assert results[0] == results[1]
                continue
            if action < 0.26:
                wire_seqs = [struct.unpack_from("!H", data, 2)[0] for data in sides[0][3].sent]
                if wire_seqs:
                    wanted = rng.choice([*wire_seqs, rng.randrange(65536)])
                    for _, sender, _, _ in sides:
                        await sender._retransmit(wanted)
                continue
            s = state[current]
            if kind == "video":
                count = rng.choice([1, 2, 3])
                views = _vp8_frame(
                    rng, s["pid"], s["seq"], s["ts"], rng.random() < 0.3, count, s["bits"]
                )
                s["pid"] = (s["pid"] + 1) & (0x7FFF if s["bits"] == 15 else 0x7F)
            else:
                count = 1
                views = [
                    rtp.RtpView(
                        1,
                        96,
                        s["seq"],
                        s["ts"],
                        rng.random() < 0.1,
                        os.urandom(rng.choice([3, 80])),
                    )
                ]
            s["seq"] = (s["seq"] + count) & 0xFFFF
            s["ts"] = (s["ts"] + (3000 if kind == "video" else 960)) & 0xFFFFFFFF
            if rng.random() < 0.15 and len(views) > 1:
                views.pop(rng.randrange(len(views)))  # lost
            if rng.random() < 0.15 and len(views) > 1:
                views[0], views[1] = views[1], views[0]  # reordered
            for view in views:
                for _, _, sources, _ in sides:
                    sources[current]._on_packet(codec, view)
        rtp.ntp_now = original_ntp
        (py_sub, py_out, py_sources, py_wire), (c_sub, c_out, c_sources, c_wire) = sides
        assert c_wire.sent == py_wire.sent
        assert c_wire.calls == py_wire.calls
        assert (c_sub.forwarded, c_sub.dropped) == (py_sub.forwarded, py_sub.dropped)
        assert (c_out.packets, c_out.dropped, c_out.retransmitted) == (
            py_out.packets,
            py_out.dropped,
            py_out.retransmitted,
        )
        assert c_out.sequence_number == py_out.sequence_number
        assert c_out.bytes == py_out.bytes or c_out.lane is None
        for a, b in zip(py_sources, c_sources, strict=True):
            assert (b.frames, b.bytes, b.keyframe_requests) == (
                a.frames,
                a.bytes,
                a.keyframe_requests,
            )
            assert b.last_frame_at == a.last_frame_at
        for source in c_sources:
            assert source.native_fanout is not None
            source.native_fanout.flush()
        assert frames[1] == frames[0]
        assert c_sub.lane is not None and c_sub.lane.last_out == py_sub._last_out
        assert c_sub.lane.last_out_at == py_sub._last_out_at
    finally:
        _fastpath.freeze_clock(None, None)
        for subscriber, _, _, _ in sides:
            subscriber.stop()
        await pc.close()
    del aiortc_seam


def _configured_lane(sent: list[bytes], video: bool = True) -> _fastpath.Lane:
    profile, size = PROFILES["aes-cm-hmac-sha1-80"]
    lane = _fastpath.Lane()
    lane.configure(
        _fastpath.HeaderWriter(1, "0", 1, 2),
        _fastpath.HeaderWriter(2, "0", 1, 2),
        _fastpath.SrtpContext(profile, bytes(size), True),
        96,
        97,
        lambda data: sent.append(data) or True,
    )
    lane.video = video
    lane.vp8 = video
    lane.ready = True
    lane.active = True
    return lane


# -- the REMB estimator (rtc/native/remb.c) against aiortc's -------------------------

Arrival = tuple[int, int, int, int]  # arrival_time_ms, abs_send_time, payload_size, ssrc
CLOCK_MS = 1_764_000_000_000  # where int(time.time() * 1000) is in 2026


def abs_send_time(send_ms: float) -> int:
    """The 24-bit abs-send-time (6.18 fixed-point seconds) a sender stamps at `send_ms`."""
    return int(send_ms * (1 << 18) / 1000) & 0xFFFFFF


def video(
    rng: random.Random,
    seconds: float,
    *,
    bitrate: int = 1_000_000,
    start_ms: float = 0.0,
    queue_ms: Callable[[float], float] = lambda t: 0.0,
    ssrcs: tuple[int, ...] = (0x1234,),
) -> list[Arrival]:
    """30 fps video at `bitrate`: each frame in ~1 kB packets paced 1 ms apart, arriving
    50 ms (plus jitter, plus `queue_ms` of the send time: congestion) after sending."""
    trace = []
    frame_bytes = bitrate // 8 // 30
    for frame in range(int(seconds * 30)):
        count = max(1, round(frame_bytes / 1000))
        for i in range(count):
            send = start_ms + frame * 1000 / 30 + i
            arrival = send + 50 + queue_ms(send - start_ms) + rng.random() * 2
            size = frame_bytes // count + rng.randint(-40, 40)
            trace.append(
                (CLOCK_MS + int(arrival), abs_send_time(send), size, ssrcs[frame % len(ssrcs)])
            )
    return trace


def _run(estimator: object, trace: list[Arrival]) -> list[object]:
    """What add() returns for each packet (an exception's type where it raises)."""
    results: list[object] = []
    for arrival_time_ms, send_time, size, ssrc in trace:
        try:
            results.append(
                estimator.add(  # type: ignore[attr-defined]
                    arrival_time_ms=arrival_time_ms,
                    abs_send_time=send_time,
                    payload_size=size,
                    ssrc=ssrc,
                )
            )
        except ZeroDivisionError as e:
            results.append(type(e))
    return results


def same_as_aiortc(trace: list[Arrival]) -> list[object]:
    """Feed `trace` to aiortc's estimator and the native one: every call returns the same."""
    theirs = _run(RemoteBitrateEstimator(), trace)
    ours = _run(_fastpath.RembEstimator(), trace)
    for i, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        assert a == b, (i, trace[max(0, i - 3) : i + 1], a, b)
    return theirs


def estimates(results: list[object]) -> list[int]:
    return [r[0] for r in results if isinstance(r, tuple)]


def test_remb_steady_video_is_estimated_as_aiortc_does() -> None:
    results = same_as_aiortc(video(random.Random(1), 20))
    rates = estimates(results)
    assert len(rates) > 30
    # aiortc's start (30 Mbit/s until 3 s of measurement), then near what is sent.
    assert 500_000 < rates[-1] < 3_000_000


def test_remb_congestion_lowers_the_estimate_and_it_recovers() -> None:
    def queue(t: float) -> float:
        """Queueing delay growing 0.3 ms a ms from 8 s for 1.5 s, then draining."""
        if t < 8_000:
            return 0.0
        if t < 9_500:
            return (t - 8_000) * 0.3
        return max(0.0, 450 - (t - 9_500) * 0.3)

    trace = video(random.Random(2), 30, queue_ms=queue)
    results = same_as_aiortc(trace)
    timed = [(trace[i][0] - CLOCK_MS, r[0]) for i, r in enumerate(results) if isinstance(r, tuple)]
    before = [rate for t, rate in timed if 6_000 < t < 8_000]
    during = [rate for t, rate in timed if 8_000 < t < 11_000]
    after = [rate for t, rate in timed if t > 25_000]
    assert before and during and after
    assert min(during) < 0.9 * min(before)  # the detector saw overuse: the estimate fell
    assert after[-1] > min(during)  # and came back once the queue drained


def test_remb_a_faster_stream_after_congestion_is_no_longer_near_the_max() -> None:
    def queue(t: float) -> float:
        return min(400.0, (t - 6_000) * 0.3) if 6_000 < t < 9_000 else 0.0

    rng = random.Random(10)
    trace = video(rng, 12, queue_ms=queue)
    trace += video(rng, 12, bitrate=6_000_000, start_ms=12_000)
    rates = estimates(same_as_aiortc(trace))
    assert rates[-1] > 2_000_000


def test_remb_the_c_entry_point_gives_the_same_estimates() -> None:
    """rr_remb_add, which the inbound path calls: aiortc's estimates, its SSRCs cut to
    the caller's capacity."""
    trace = video(random.Random(11), 12, ssrcs=(7, 8, 9))
    theirs = _run(RemoteBitrateEstimator(), trace)
    native = _fastpath.RembEstimator()
    ours = [native._c_add(t, a, size, ssrc, 2) for a, t, size, ssrc in trace]
    assert [r[0] if r else None for r in ours] == [r[0] if r else None for r in theirs]
    assert [r[1] for r in ours if r][-1] == [7, 8]
    with pytest.raises(ValueError):
        native._c_add(0, CLOCK_MS, 0, 0, 17)


def test_remb_bursts_and_reordering() -> None:
    rng = random.Random(3)
    trace = video(rng, 12)
    # Bursts: packets held back, then delivered within the same millisecond.
    for start in range(100, len(trace) - 40, 180):
        release = trace[start + 30][0]
        for i in range(start, start + 30):
            trace[i] = (release, *trace[i][1:])
    # Reordering: neighbours swapped, and a few packets from much earlier.
    for i in range(1, len(trace)):
        if rng.random() < 0.05:
            trace[i - 1], trace[i] = trace[i], trace[i - 1]
    for i in range(300, len(trace), 400):
        trace.insert(i, (trace[i][0], trace[i - 250][1], 900, 0x1234))
    assert estimates(same_as_aiortc(trace))


def test_remb_abs_send_time_wraps_around_2_24() -> None:
    # abs-send-time wraps every 64 s; start 3 s before a wrap and cross two.
    wrap_ms = (1 << 24) * 1000 / (1 << 18)
    trace = video(random.Random(4), 8, start_ms=wrap_ms - 3_000)
    trace += video(random.Random(5), 8, start_ms=2 * wrap_ms - 3_000)
    trace = [(arrival, *rest) for arrival, *rest in trace]
    assert any(a[1] > b[1] for a, b in itertools.pairwise(trace))  # it wrapped
    assert estimates(same_as_aiortc(trace))


def test_remb_several_ssrcs_are_all_in_the_estimate() -> None:
    trace = video(random.Random(6), 10, ssrcs=(11, 22, 33, 44))
    rates = same_as_aiortc(trace)
    last = [r for r in rates if isinstance(r, tuple)][-1]
    assert last[1] == [11, 22, 33, 44]


def test_remb_pauses_and_time_going_back() -> None:
    rng = random.Random(7)
    trace = video(rng, 6)
    for gap_ms in (1_500, 30_000, -20, -5_000, 200_000, -2_000_000):
        offset = trace[-1][0] + gap_ms - trace[0][0]
        trace += [(a + offset, *rest) for a, *rest in video(rng, 4)]
    assert estimates(same_as_aiortc(trace))


def test_remb_huge_and_empty_payloads() -> None:
    rng = random.Random(8)
    trace = [(a, t, rng.choice((0, 0xFFFFFFFF, s)), ssrc) for a, t, s, ssrc in video(rng, 8)]
    assert estimates(same_as_aiortc(trace))
    # 600 packets a second of 4 GB: 8000 * bytes in the window passes 2**53, where
    # Python's int / int is still rounded once (and (double)a / b would not be).
    trace = [(a, t, 0xFFFFFFFF - s % 7, ssrc) for a, t, s, ssrc in video(rng, 8, bitrate=4_800_000)]
    assert estimates(same_as_aiortc(trace))

    # A trickle of tiny packets, congested (the estimate's max becomes ~0.5 kbit/s),
    # then empty ones, congested again: the estimate drops to 0 and aiortc's next
    # additive increase divides by zero. The native one raises at the same packet.
    def ramp(start: float) -> Callable[[float], float]:
        def queue(t: float) -> float:
            if t < start:
                return 0.0
            if t < start + 1_500:
                return (t - start) * 0.5
            return max(0.0, 750 - (t - start - 1_500) * 0.5)

        return queue

    rng = random.Random(0)
    trace = [(a, t, 2, ssrc) for a, t, _, ssrc in video(rng, 12, bitrate=500, queue_ms=ramp(5_000))]
    trace += [
        (a, t, 0, ssrc)
        for a, t, _, ssrc in video(rng, 12, bitrate=500, start_ms=12_000, queue_ms=ramp(3_000))
    ]
    results = same_as_aiortc(trace)
    assert ZeroDivisionError in results


def test_remb_remembers_at_most_16_ssrcs() -> None:
    """aiortc's list grows with every SSRC ever seen; the native one keeps the 16 most
    recently seen (a receiver has two), with the same estimate."""
    trace = video(random.Random(9), 10, ssrcs=tuple(range(1, 41)))
    theirs = _run(RemoteBitrateEstimator(), trace)
    ours = _run(_fastpath.RembEstimator(), trace)
    assert [r[0] if isinstance(r, tuple) else r for r in theirs] == [
        r[0] if isinstance(r, tuple) else r for r in ours
    ]
    last = max(i for i, r in enumerate(ours) if isinstance(r, tuple))
    seen = [ssrc for _, _, _, ssrc in trace[: last + 1]]
    recent = list(dict.fromkeys(reversed(seen)))[:16]
    result = ours[last]
    assert isinstance(result, tuple) and sorted(result[1]) == sorted(recent)


def test_remb_takes_aiortcs_arguments() -> None:
    estimator = _fastpath.RembEstimator()
    assert estimator.add(CLOCK_MS, 1000, 1200, 5) == RemoteBitrateEstimator().add(
        CLOCK_MS, 1000, 1200, 5
    )
    with pytest.raises(TypeError):
        estimator.add(CLOCK_MS, 1000, 1200)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        estimator.add(CLOCK_MS, 1000, 1200, 5, ssrc=5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        estimator.add(CLOCK_MS, 1000, 1200, 5, size=5)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        estimator.add(CLOCK_MS, -1, 1200, 5)
    with pytest.raises(OverflowError):
        estimator.add(1 << 60, 1, 1200, 5)
    with pytest.raises(TypeError):
        _fastpath.RembEstimator(1)  # type: ignore[call-arg]


@FUZZ
@given(
    packets=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.booleans(),
            st.binary(max_size=64) | st.binary(min_size=16000, max_size=17000),
            st.booleans(),
        ),
        max_size=30,
    ),
    codec=st.sampled_from(["VP8", "H264", "OPUS"]),
    last_out=st.none() | st.integers(-(2**63), 2**63 - 1),
    last_out_at=st.floats(allow_nan=True, allow_infinity=True),
)
def test_lanes_and_fanouts_take_garbage(
    packets: list[tuple[int, int, bool, bytes, bool]],
    codec: str,
    last_out: int | None,
    last_out_at: float,
) -> None:
    """Any packet, any timeline Python may set: sent or dropped, never a crash; and
    whatever is sent is a packet the receiver reads back."""
    sent: list[bytes] = []
    lane = _configured_lane(sent, video=codec != "OPUS")
    lane.last_out = last_out
    lane.last_out_at = last_out_at
    fanout = _fastpath.Fanout()
    fanout.set_codec(96, codec, codec != "OPUS")
    fanout.set_lanes((lane,))
    lane.active = True
    fanout.frames_wanted = True
    for seq, ts, marker, payload, keyframe in packets:
        lane.push(seq, ts, marker, payload, keyframe)
        fanout.push(seq, ts, marker, payload)
        lane.send(payload, marker, ts, seq if keyframe else None, seq & 0x7FFF)
        lane.retransmit(seq & 0xFFFF)
    assert fanout.bytes == sum(len(p[3]) for p in packets)
    for data in sent:
        assert len(data) <= 16384
    rx = _fastpath.SrtpContext(
        PROFILES["aes-cm-hmac-sha1-80"][0], bytes(PROFILES["aes-cm-hmac-sha1-80"][1]), False
    )
    for data in sent:
        plain = rx.unprotect(data)
        if plain is not None:  # a repeat (retransmitted without RTX) is a replay to it
            assert rtp.parse(plain) is not None


@FUZZ
@given(payload=st.binary(max_size=40), codec=st.sampled_from(["VP8", "H264", "AV1"]))
def test_the_fanout_finds_the_keyframes_rtc_rtp_finds(payload: bytes, codec: str) -> None:
    """Keyframe detection in C (gating a fresh lane) against rtc.rtp.starts_keyframe."""
    sent: list[bytes] = []
    lane = _configured_lane(sent)
    fanout = _fastpath.Fanout()
    fanout.set_codec(96, codec, True)
    fanout.set_lanes((lane,))
    lane.active = True
    fanout.push(1, 1, False, payload)
    assert (not lane.need_start) == rtp.starts_keyframe(codec, payload)


def test_bad_calls_are_refused_with_a_reason() -> None:
    lane = _fastpath.Lane()
    fanout = _fastpath.Fanout()
    with pytest.raises(TypeError):
        fanout.set_lanes((lane, "not a lane"))
    with pytest.raises(TypeError):
        fanout.set_lanes([lane])
    with pytest.raises(ValueError):
        fanout.set_codec(300, "VP8", True)
    with pytest.raises(TypeError):
        lane.configure("w", None, "s", 96, None, None)
    with pytest.raises(TypeError):
        lane.destination = "nowhere"
    with pytest.raises(ValueError):
        lane.clock = 0
    with pytest.raises(TypeError):
        lane.push(1, 2, 3)
    with pytest.raises(TypeError):
        fanout.push(1, 2, 3)
    # Not configured, not ready: nothing sent, nothing counted.
    assert lane.send(b"x", True, 1) is False and lane.send_dropped == 0
    assert lane.retransmit(5) is False
    # A fanout without a codec yet leaves the packet to Python.
    assert fanout.push(1, 2, True, b"x") is True
    assert fanout.frames == 0


def test_lanes_and_fanouts_are_freed_with_their_cycles() -> None:
    """A lane calls back its subscriber, a fanout its source: cycles the collector frees."""
    import gc
    import weakref

    class Owner:
        def callback(self, *args: object) -> None:
            pass

    refs = []
    for _ in range(200):
        owner = Owner()
        lane = _configured_lane([])
        lane.on_keyframe_wanted = owner.callback
        fanout = _fastpath.Fanout()
        fanout.on_frames = owner.callback
        fanout.set_lanes((lane,))
        owner.lane, owner.fanout = lane, fanout  # type: ignore[attr-defined]
        lane.push(1, 1, True, bytes(1000), True)  # fills a history entry
        refs.append(weakref.ref(owner))
        del owner, lane, fanout
    gc.collect()
    assert all(ref() is None for ref in refs)


@pytest.mark.parametrize("family", ["127.0.0.1"])
def test_forwarding_through_the_fanout_makes_no_python_objects(family: str) -> None:
    """Packet in, every lane's sendto(2) out: no Python object per packet (net blocks
    flat, and no payload-sized peak from a copy)."""
    import socket
    import sys
    import tracemalloc

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind((family, 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        lanes = []
        for _ in range(3):
            lane = _configured_lane([])
            lane.destination = _fastpath.Destination(
                sender.fileno(), family, receiver.getsockname()[1]
            )
            lanes.append(lane)
        fanout = _fastpath.Fanout()
        fanout.set_codec(96, "VP8", True)
        fanout.set_lanes(tuple(lanes))
        for lane in lanes:
            lane.active = True
        payload = bytes([0x90, 0x80, 0x80, 1, 0x00]) + bytes(1200)
        numbers = list(range(3000))
        later = iter(numbers[600:])
        push = fanout.push
        # Once round the NACK history: its buffers are made once, then reused.
        for seq in numbers[:600]:
            push(seq, seq * 10, True, payload)
        tracemalloc.start()
        blocks = sys.getallocatedblocks()
        tracemalloc.reset_peak()
        for seq in later:
            push(seq, seq * 10, True, payload)
        current, peak = tracemalloc.get_traced_memory()
        grown = sys.getallocatedblocks() - blocks
        tracemalloc.stop()
        assert all(lane.packets == 3000 for lane in lanes)
        assert grown < 50, grown
        assert peak - current < 1000, (peak, current)
    finally:
        receiver.close()
        sender.close()


@FUZZ
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 40), st.integers(-100, 3_000), st.sampled_from([0, 1, 33])),
            st.one_of(st.integers(0, 20_000), st.integers(0, 0xFFFFFF)),
            st.one_of(st.integers(0, 1_500), st.sampled_from([0, 0xFFFFFFFF])),
            st.integers(0, 3),
        ),
        max_size=400,
    )
)
def test_remb_any_trace_is_estimated_as_aiortc_does(
    steps: list[tuple[int, int, int, int]],
) -> None:
    now, send = CLOCK_MS, 0
    trace = []
    for dt, dsend, size, ssrc in steps:
        now += dt
        send = (send + dsend) & 0xFFFFFF
        trace.append((now, send, size, ssrc))
    same_as_aiortc(trace)


def test_remb_a_long_random_trace_is_estimated_as_aiortc_does() -> None:
    rng = random.Random(14)
    now, send, trace = CLOCK_MS, 0, []
    for _ in range(30_000):
        now += rng.choice((0, 0, 1, 2, 5, 33, 34, rng.randint(-50, 600)))
        send = (send + rng.choice((0, 256, 8_700, rng.randint(0, 1 << 20)))) & 0xFFFFFF
        trace.append((now, send, rng.choice((rng.randint(1, 1_300), 0, 60)), rng.randint(1, 3)))
    assert estimates(same_as_aiortc(trace))


@settings(FUZZ, max_examples=500)
@given(
    args=st.lists(
        st.one_of(
            st.integers(),
            st.integers(-(1 << 66), 1 << 66),
            st.integers(0, 0xFFFFFFFF),
            st.floats(),
            st.none(),
            st.text(max_size=3),
        ),
        min_size=4,
        max_size=4,
    ),
    repeat=st.integers(1, 30),
)
def test_remb_garbage_arguments_are_an_error_or_an_estimate(
    args: list[object], repeat: int
) -> None:
    estimator = _fastpath.RembEstimator()
    for i in range(repeat):
        values = [a + i * 17 if isinstance(a, int) else a for a in args]
        try:
            result = estimator.add(*values)  # type: ignore[arg-type]
        except (TypeError, OverflowError, ZeroDivisionError):
            continue
        assert result is None or (isinstance(result[0], int) and isinstance(result[1], list))


# -- the inbound path (rtc/native/inbound.c) against the Python one --------------------


def _fields(view: rtp.RtpView | None) -> tuple[object, ...] | None:
    if view is None:
        return None
    return tuple(getattr(view, name) for name in rtp.RtpView.__slots__)


def _with_abs_send_time(rng: random.Random, packet: bytes, ident: int) -> bytes:
    """`packet` with a one-byte-profile extension block carrying abs-send-time (and
    padding bytes, other elements, sometimes a reserved id 15 that ends the block)."""
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", packet)
    csrcs = 4 * (first & 0x0F)
    view = rtp.parse(packet)
    assert view is not None
    elements = b""
    for _ in range(rng.randrange(4)):
        elements += rng.choice(
            [b"\x00", bytes([0x10 | rng.randrange(4)]) + os.urandom(4), b"\xf0"]
        )[: rng.randrange(1, 6)]
    elements += bytes([ident << 4 | 2]) + os.urandom(3)
    elements += bytes(-len(elements) % 4)
    header = struct.pack("!BBHII", first | 0x10, second, seq, timestamp, ssrc)
    extension = struct.pack("!HH", rng.choice([0xBEDE, 0xBEDE, 0x1000]), len(elements) // 4)
    tail = bytes(view.padding_size - 1) + bytes([view.padding_size]) if view.padding_size else b""
    return header + packet[12 : 12 + csrcs] + extension + elements + view.payload + tail


def test_parse_reads_what_rtc_rtp_parse_reads() -> None:
    """Browsers' packets (CSRCs, extensions of both profiles, abs-send-time among other
    elements, padding), and the same cut short or with their lengths bent."""
    rng = random.Random(14)
    for count in range(3000):
        packet = rtp_packet(rng, rng.randrange(1 << 32), count, count * 90)
        if rng.random() < 0.5:
            packet = _with_abs_send_time(rng, packet, rng.randrange(1, 15))
        if rng.random() < 0.3:
            packet = packet[: rng.randrange(len(packet) + 1)]
        if rng.random() < 0.2 and packet:
            spot = rng.randrange(len(packet))
            packet = packet[:spot] + bytes([rng.randrange(256)]) + packet[spot + 1 :]
        for ident in (None, rng.randrange(0, 16)):
            assert _fields(_fastpath.parse_rtp(packet, ident)) == _fields(rtp.parse(packet, ident))


@FUZZ
@given(data=st.binary(max_size=300), ident=st.one_of(st.none(), st.integers(-1, 16)))
def test_parse_of_garbage_is_what_rtc_rtp_parse_says(data: bytes, ident: int | None) -> None:
    assert _fields(_fastpath.parse_rtp(data, ident)) == _fields(rtp.parse(data, ident))


def _sequence(rng: random.Random, count: int, start: int) -> list[int]:
    """Sequence numbers as a network delivers them: in order, lost, reordered,
    duplicated, a jump ahead, across the 16-bit wrap."""
    numbers = []
    seq = start
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            seq += rng.randrange(2, 40)  # a burst lost
        elif roll < 0.06:
            seq += rng.randrange(200, 3000)  # a jump ahead (past the NACK history)
        elif roll < 0.12 and numbers:
            numbers.append((seq - rng.randrange(1, 150)) & 0xFFFF)  # late, or a duplicate
        seq += 1
        numbers.append(seq & 0xFFFF)
    return numbers


def test_stream_statistics_are_aiortcs(monkeypatch) -> None:
    """aiortc's StreamStatistics and the C Stream, given the same packets at the same
    times, report the same numbers (what its receiver reports and getStats are made of)."""
    from aiortc.rtcrtpreceiver import StreamStatistics

    rng = random.Random(3)
    receiver = _fastpath.Receiver(lambda codec, view: None)
    for clockrate, start in ((90000, 65000), (48000, 10)):
        theirs = StreamStatistics(clockrate)
        ours = _fastpath.Stream(receiver, 1, clockrate, None)
        now = 1_700_000_000.0
        for index, seq in enumerate(_sequence(rng, 5000, start)):
            now += rng.choice((0.0, 0.001, 0.02, 0.5))
            timestamp = (seq * 3000 + rng.randrange(-50, 50)) & 0xFFFFFFFF
            monkeypatch.setattr("time.time", lambda now=now: now)
            theirs.add(rtp.RtpView(1, 96, seq, timestamp, False, b""))  # type: ignore[arg-type]
            monkeypatch.undo()
            ours.add_at(seq, timestamp, int(now * clockrate))
            for name in (
                "base_seq",
                "max_seq",
                "cycles",
                "packets_received",
                "jitter",
                "packets_expected",
                "packets_lost",
                "_jitter_q4",
                "_last_arrival",
                "_last_timestamp",
            ):
                assert getattr(ours, name) == getattr(theirs, name), (index, name)
            if index % 97 == 0:  # a report: fraction_lost starts a new interval
                assert ours.fraction_lost == theirs.fraction_lost, index
        assert theirs.cycles > 0 or start < 60000


def test_the_nack_generator_is_aiortcs() -> None:
    """Same sequence numbers (loss, reordering, jumps, the wrap): a NACK is due at the
    same packets, for the same missing set."""
    from aiortc.rtcrtpreceiver import NackGenerator

    rng = random.Random(5)
    theirs, ours = NackGenerator(), _fastpath.NackGenerator()
    assert ours.max_seq is None and ours.missing == set()
    for index, seq in enumerate(_sequence(rng, 20000, 60000)):
        view = rtp.RtpView(1, 96, seq, 0, False, b"")
        assert ours.add(seq) == theirs.add(view), index  # type: ignore[arg-type]
        assert ours.missing == theirs.missing, index
        assert ours.max_seq == theirs.max_seq


class _Peer:
    """The sending side of a connection: seals packets for an Inbound's context."""

    def __init__(self) -> None:
        profile, size = PROFILES["aes-128-gcm"]
        key = os.urandom(size)
        self.tx = _fastpath.SrtpContext(profile, key, True)
        self.rx = _fastpath.SrtpContext(profile, key, False)

    def seal(self, packet: bytes) -> bytes:
        sealed = self.tx.protect(packet)
        assert sealed is not None
        return sealed


def test_inbound_hands_on_what_the_python_path_hands_on() -> None:
    """A media stream and its RTX stream (retransmissions and padding-only probes) through
    Inbound: the handler sees what rtc.rtp.parse / unwrap_rtx give, NACKs are sent when
    aiortc's generator says so with its missing list, statistics count every packet."""
    from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics

    rng = random.Random(8)
    peer = _Peer()
    seen: list[tuple[object, rtp.RtpView]] = []
    nacks: list[tuple[int, list[int]]] = []
    receiver = _fastpath.Receiver(
        lambda codec, view: seen.append((codec, view)),
        None,
        lambda ssrc, lost: nacks.append((ssrc, lost)),
    )
    codec = object()
    learnt: list[int] = []

    def learn(plain: bytes) -> _fastpath.Stream | None:
        view = rtp.parse(plain)
        assert view is not None
        learnt.append(view.ssrc)
        if view.ssrc == 1111:
            return _fastpath.Stream(receiver, 1111, 90000, codec)
        if view.ssrc == 2222:
            return _fastpath.Stream(receiver, 2222, 90000, codec, (96, 1111))
        return None

    inbound = _fastpath.Inbound(16, learn, lambda: False)
    before_keys = peer.seal(rtp_packet(rng, 1111, 64990, 0))
    assert inbound.datagram(before_keys) == _fastpath.INBOUND_PASS
    inbound.srtp = peer.rx
    inbound.abs_send_time_id = 3
    nack, stats = NackGenerator(), {1111: StreamStatistics(90000), 2222: StreamStatistics(90000)}
    expected: list[rtp.RtpView] = []
    expected_nacks: list[tuple[int, list[int]]] = []
    sent: dict[int, bytes] = {}
    rtx_seq = 500
    for index, seq in enumerate(_sequence(rng, 3000, 65000)):
        if seq in sent and rng.random() < 0.5:  # resent as RTX, or a probe
            probe = rng.random() < 0.2
            payload = b"" if probe else rtp.rtx_payload(seq, rtp.parse(sent[seq]).payload)  # type: ignore[union-attr]
            packet = struct.pack("!BBHII", 0xA0 if probe else 0x80, 97, rtx_seq, index, 2222)
            packet += payload + (bytes(rng.randrange(1, 200)) if probe else b"")
            if probe:
                packet = packet[:-1] + bytes([len(packet) - 12])
            rtx_seq += 1
        else:
            packet = rtp_packet(rng, 1111, seq, index * 3000)
            packet = packet[:1] + bytes([packet[1] & 0x80 | 96]) + packet[2:]
            if rng.random() < 0.3:
                packet = _with_abs_send_time(rng, packet, 3)
            sent.setdefault(seq, packet)
        sealed = peer.seal(packet)
        if rng.random() < 0.01:  # damaged on the way: refused, not handed on
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            assert inbound.datagram(sealed) == _fastpath.INBOUND_UNREADABLE
            continue
        if inbound.datagram(sealed) == _fastpath.INBOUND_UNREADABLE:
            continue  # a replay of a packet sent before: SRTP refuses it
        view = rtp.parse(packet, 3)
        assert view is not None
        stats[view.ssrc].add(view)  # type: ignore[arg-type]
        if view.ssrc == 2222:
            unwrapped = rtp.unwrap_rtx(view, 96, 1111)
            if unwrapped is None:
                continue
            view = unwrapped
        if nack.add(view):  # type: ignore[arg-type]
            expected_nacks.append((1111, sorted(nack.missing)))
        if view.payload:
            expected.append(view)
    assert [_fields(v) for _, v in seen] == [_fields(v) for v in expected]
    assert all(c is codec for c, _ in seen)
    assert nacks == expected_nacks and len(nacks) > 50
    assert learnt == [1111, 2222]
    for ssrc, theirs in stats.items():
        ours = inbound.streams[ssrc]
        assert (ours.packets_received, ours.max_seq, ours.packets_lost, ours.cycles) == (
            theirs.packets_received,
            theirs.max_seq,
            theirs.packets_lost,
            theirs.cycles,
        )
    # Not RTP (DTLS, STUN, RTCP): for the caller to pass on.
    for other in (b"\x16\xfe\xfd" + bytes(20), b"\x00\x01" + bytes(30), b"\x80\xc8" + bytes(30)):
        assert inbound.datagram(other) == _fastpath.INBOUND_PASS


def test_new_ssrcs_beyond_the_limit_are_ignored_not_learnt() -> None:
    peer = _Peer()
    receiver = _fastpath.Receiver(lambda codec, view: None)
    inbound = _fastpath.Inbound(
        3,
        lambda plain: _fastpath.Stream(receiver, rtp.parse(plain).ssrc, 90000, None),
        bool,  # type: ignore[union-attr]
    )
    inbound.srtp = peer.rx
    codes = [
        inbound.datagram(peer.seal(struct.pack("!BBHII", 0x80, 96, 1, 0, ssrc) + b"x"))
        for ssrc in range(5)
    ]
    assert codes == [_fastpath.INBOUND_HANDLED] * 3 + [_fastpath.INBOUND_IGNORED] * 2
    assert sorted(inbound.streams) == [0, 1, 2] and inbound.ignored == 2


def test_datagram_received_passes_on_what_is_not_rtp() -> None:
    """As a socket protocol's datagram_received: RTP taken, the rest to the original."""
    peer = _Peer()
    views: list[rtp.RtpView] = []
    receiver = _fastpath.Receiver(lambda codec, view: views.append(view))
    inbound = _fastpath.Inbound(4, lambda plain: _fastpath.Stream(receiver, 5, 90000, "c"), bool)
    inbound.srtp = peer.rx
    passed: list[tuple[bytes, object]] = []
    stun = b"\x00\x01\x00\x00" + bytes(16)
    inbound.datagram_received(lambda data, addr: passed.append((data, addr)), stun, ("h", 1))
    packet = struct.pack("!BBHII", 0x80, 96, 9, 0, 5) + b"payload"
    inbound.datagram_received(lambda data, addr: passed.append((data, addr)), peer.seal(packet), 1)
    assert passed == [(stun, ("h", 1))]
    assert [(v.sequence_number, v.payload) for v in views] == [(9, b"payload")]


@FUZZ
@given(
    data=st.binary(max_size=400),
    first=st.integers(0x80, 0xBF),
    rtx=st.booleans(),
)
def test_inbound_survives_garbage(data: bytes, first: int, rtx: bool) -> None:
    """Random datagrams, and random plaintext sealed for real (so it gets past SRTP to the
    parser, the RTX unwrap and the NACK generator): refused or handed on, never a crash."""
    peer = _Peer()
    receiver = _fastpath.Receiver(lambda codec, view: None, None, lambda ssrc, lost: None)

    def learn(plain: bytes) -> _fastpath.Stream | None:
        view = rtp.parse(plain)
        return (
            _fastpath.Stream(receiver, view.ssrc, 90000, None, (96, 1) if rtx else None)
            if view
            else None
        )

    inbound = _fastpath.Inbound(2, learn, bool)
    inbound.srtp = peer.rx
    inbound.abs_send_time_id = 1
    inbound.datagram(data)
    plain = bytes([first]) + data
    sealed = peer.tx.protect(plain)
    if sealed is not None:
        assert (
            inbound.datagram(sealed) != _fastpath.INBOUND_PASS
            or len(plain) < 12
            or 192 <= plain[1] <= 208
        )


def test_inbound_objects_are_collected() -> None:
    """A learn callback that refers back to its Inbound (as _Inbound's does) is a cycle
    the collector breaks; nothing stays behind."""
    import gc
    import weakref

    class Holder:
        inbound: object = None

    peer = _Peer()
    refs = []
    for seq in range(50):
        holder = Holder()
        receiver = _fastpath.Receiver(lambda codec, view, h=holder: None)
        inbound = _fastpath.Inbound(
            4, lambda plain, h=holder, r=receiver: _fastpath.Stream(r, 5, 90000, h), bool
        )
        holder.inbound = inbound
        inbound.srtp = peer.rx
        inbound.datagram(peer.seal(struct.pack("!BBHII", 0x80, 96, seq, 0, 5) + b"x"))
        assert len(inbound.streams) == 1
        refs.append(weakref.ref(holder))
        del holder, inbound, receiver
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_drain_reads_every_datagram_waiting_and_passes_on_the_rest() -> None:
    """As an event-loop reader on a real UDP socket: RTP handed on from C, DTLS/STUN to
    the original with the address recvfrom gives, too-long datagrams counted and
    dropped, a read error to error_received."""
    peer = _Peer()
    views: list[rtp.RtpView] = []
    receiver = _fastpath.Receiver(lambda codec, view: views.append(view))
    inbound = _fastpath.Inbound(4, lambda plain: _fastpath.Stream(receiver, 5, 90000, "c"), bool)
    inbound.srtp = peer.rx
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        passed: list[tuple[bytes, object]] = []
        errors: list[OSError] = []
        stun = b"\x00\x01\x00\x00" + bytes(16)
        sent = 0
        for seq in range(100):  # more than one recvmmsg batch
            packet = struct.pack("!BBHII", 0x80, 96, seq, 0, 5) + bytes([seq]) * 50
            client.sendto(peer.seal(packet), server.getsockname())
            sent += 1
            if seq % 10 == 0:
                client.sendto(stun, server.getsockname())
                sent += 1
        client.sendto(b"\x16" + bytes(5000), server.getsockname())  # longer than drain reads
        sent += 1
        while inbound.drained < sent:
            before = inbound.drained
            inbound.drain(server.fileno(), lambda d, a: passed.append((d, a)), errors.append)
            assert inbound.drained > before
        assert [(v.sequence_number, v.payload) for v in views] == [
            (seq, bytes([seq]) * 50) for seq in range(100)
        ]
        assert passed == [(stun, client.getsockname())] * 10
        assert inbound.truncated == 1 and not errors
        inbound.drain(server.fileno(), passed.append, errors.append)  # nothing waiting
        assert not errors
    finally:
        server.close()
        client.close()
    with open(os.devnull, "rb") as not_a_socket:
        inbound.drain(not_a_socket.fileno(), passed.append, errors.append)
    assert [error.errno for error in errors] == [errno.ENOTSOCK]


# -- the pipe between nodes, receiving (rtc/native/pipe_in.c) -----------------------

PIPE_SECRET = b"a cluster secret of some length"
_VP8_KEY = b"\x90\x80\x80\x01" + bytes(40)  # starts a keyframe (P bit clear)
_VP8_DELTA = b"\x90\x80\x80\x01\x01" + bytes(30)


def _rtp_body(payload_type: int, seq: int, timestamp: int, marker: bool, payload: bytes) -> bytes:
    return struct.pack("!BHI", payload_type | (0x80 if marker else 0), seq, timestamp) + payload


class _PipeArrivals:
    """A Python sink on a PipePublisher: what a subscriber would be handed."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, int, bool, bytes, bool]] = []

    def push_packet(self, codec: object, view: rtp.RtpView, keyframe: bool) -> None:
        self.seen.append(
            (
                view.ssrc,
                view.payload_type,
                view.sequence_number,
                view.timestamp,
                view.marker,
                view.payload,
                keyframe,
            )
        )

    def detach(self) -> None:
        pass


async def _pipe_receivers(encrypt: bool):  # type: ignore[no-untyped-def]
    """Two senders (x, z: two other nodes) and two receiving endpoints expecting video
    stream 1 and audio stream 2 from x: one on the Python path, one reading with this
    module's PipeReader and Fanouts (set up as PipeEndpoint.start does)."""
    from rtc import packet_path
    from rtc.pipe import PipeEndpoint

    previous = packet_path.name()
    packet_path.select("python")
    try:
        made = [PipeEndpoint(PIPE_SECRET, encrypt=encrypt) for _ in range(4)]
        for endpoint in made:
            await endpoint.start()
        x, _, python, native = made
        sinks = []
        for receiver in (python, native):
            video = receiver.receive_stream(1, "video", x.address)
            receiver.receive_stream(2, "audio", x.address)
            if receiver is native:
                for publisher in receiver.streams_in:
                    fanout = _fastpath.Fanout()
                    fanout.on_frames = publisher._on_native_frames
                    publisher.native_fanout = fanout
                native._reader = _fastpath.PipeReader(
                    None if encrypt else native._mac_key,
                    native._derive_key if encrypt else None,
                    native._on_native_message,
                )
                for publisher in receiver.streams_in:
                    native._expect(publisher)
            sink = _PipeArrivals()
            video.add_subscriber(sink)
            sinks.append(sink)
    finally:
        packet_path.select(previous)
    return made, sinks


@pytest.mark.parametrize("encrypt", [False, True], ids=["hmac", "aead"])
async def test_the_pipe_reader_takes_and_drops_what_the_python_endpoint_does(
    encrypt: bool,
) -> None:
    from rtc.pipe import HEADER_SIZE, TAG_SIZE, MessageType, codec_to_json

    (x, z, python, native), (python_sink, native_sink) = await _pipe_receivers(encrypt)
    captured: list[bytes] = []
    for sender in (x, z):
        sender._sendto = lambda data, to: captured.append(data)  # type: ignore[method-assign]
    to = ("127.0.0.1", 9)

    def datagram(sender, *messages: tuple[int, int, bytes]) -> bytes:  # type: ignore[no-untyped-def]
        for kind, stream_id, body in messages:
            sender._send(kind, stream_id, body, to)
        sender._flush()
        return captured.pop()

    def raw(parts: list[bytes]) -> bytes:
        x._send_datagram(to, parts)
        return captured.pop()

    vp8 = codec_to_json(_codec("video"))
    opus = codec_to_json(_codec("audio"))
    rtp_kind, codec_kind = MessageType.RTP, MessageType.CODEC
    # Sent first, so the media after them are within the replay window.
    start = [
        (datagram(x, (rtp_kind, 1, _rtp_body(96, 1, 0, False, _VP8_KEY))), x),  # before the codec
        (
            datagram(
                x,
                (codec_kind, 1, vp8),
                (codec_kind, 2, opus),
                (rtp_kind, 1, _rtp_body(96, 2, 0, False, _VP8_KEY)),
                (rtp_kind, 1, _rtp_body(96, 3, 0, True, b"\x10" + bytes(9))),
                (rtp_kind, 2, _rtp_body(111, 100, 0, True, b"opus")),
            ),
            x,
        ),
    ]
    media = []
    for index in range(8):
        seq = 10 + 3 * index
        media.append(
            datagram(
                x,
                (rtp_kind, 1, _rtp_body(96, seq, 3000 * index, False, _VP8_DELTA + bytes([index]))),
                (rtp_kind, 2, _rtp_body(111, index, 960 * index, False, bytes([index]) * 20)),
                (rtp_kind, 1, _rtp_body(96, seq + 1, 3000 * index, True, _VP8_DELTA)),
            )
        )
    far = [
        datagram(x, (rtp_kind, 1, _rtp_body(96, 500 + i, 0, True, _VP8_DELTA))) for i in range(130)
    ]
    valid = datagram(x, (rtp_kind, 1, _rtp_body(96, 900, 1, True, _VP8_KEY)))
    sequence = [
        *start,
        (media[0], x),
        (media[2], x),  # reordered within the window
        (media[1], x),
        (media[1], x),  # replayed
        *[(d, x) for d in media[3:]],
        (far[-1], x),
        (far[0], x),  # beyond the window
        (far[-2], x),
        (datagram(x, (rtp_kind, 1, _rtp_body(100, 7, 0, True, b"x"))), x),  # a new payload type
        (datagram(x, (rtp_kind, 1, b"\x60\x00")), x),  # an RTP body too short
        (datagram(x, (rtp_kind, 99, _rtp_body(96, 1, 0, True, b"x"))), x),  # unknown stream
        (datagram(z, (rtp_kind, 1, _rtp_body(96, 8, 0, True, b"z"))), z),  # the wrong address
        (datagram(z, (codec_kind, 1, vp8)), z),
        (datagram(x, (codec_kind, 1, b"not json")), x),
        (datagram(x, (codec_kind, 1, vp8), (codec_kind, 1, vp8)), x),
        (datagram(x, (MessageType.KEYFRAME_REQUEST, 1, b"")), x),
        (datagram(x, (MessageType.CODEC_REQUEST, 5, b"")), x),
        (datagram(x, (9, 1, b"what"), (rtp_kind, 1, _rtp_body(96, 901, 2, True, _VP8_KEY))), x),
        (raw([b""]), x),  # no message
        (raw([struct.pack("!BIH", 1, 1, 50) + b"short"]), x),  # a length past the end
        (raw([struct.pack("!BIH", 5, 2, 0) + b"\x01\x00"]), x),  # a header cut short
        (valid[: HEADER_SIZE + TAG_SIZE - 1], x),
        (valid[:40], x),
        (bytes([1]) + valid[1:], x),  # another version
        (valid[:-1] + bytes([valid[-1] ^ 1]), x),  # a forged tag
        (valid[:1] + os.urandom(8) + valid[9:], x),  # an epoch never seen
        (valid, x),
        (valid, z),  # the same datagram from another address: its own window
        (datagram(x, (MessageType.BYE, 2, b""), (MessageType.BYE, 7, b"")), x),
    ]
    try:
        for data, sender in sequence:
            for receiver in (python, native):
                receiver._receive(data, sender.address)
        assert native._reader is not None and python._reader is None
        assert native._reader.received > 0
        assert native_sink.seen == python_sink.seen
        assert len(native_sink.seen) > 20, (python.dropped, [s[2] for s in python_sink.seen])
        assert (native.received, native.messages_received) == (
            python.received,
            python.messages_received,
        )
        assert dict(native.dropped) == dict(python.dropped)
        assert set(python.dropped) == {
            "malformed",
            "unauthenticated",
            "replayed",
            "unknown_stream",
            "wrong_address",
        }
        assert native.messages_sent == python.messages_sent  # CODEC_REQUESTs
        for mine, theirs in zip(native.streams_in, python.streams_in, strict=True):
            assert (mine.frames, mine.bytes, mine.ended, mine.codec) == (
                theirs.frames,
                theirs.bytes,
                theirs.ended,
                theirs.codec,
            )
        if encrypt:
            assert native._reader.epochs == len(python._peer_aeads) == 2  # not the forged one
        assert native._reader.windows == len(python._windows) == 3  # (x, z, x's from z)
    finally:
        for endpoint in (x, z, python, native):
            await endpoint.close()
    assert native._reader.streams == 0


class _FuzzPublisher:
    """Stands for a PipePublisher: what the reader hands Python."""

    def __init__(self) -> None:
        self.calls = 0

    def _receive_rtp(self, data: bytes, start: int, end: int) -> bool:
        self.calls += 1
        return end - start >= 7

    def _on_native_leftover(self, *args: object) -> None:
        self.calls += 1


def _fuzz_reader(encrypt: bool, messages: list[tuple[str, int, int, bytes]]):  # type: ignore[no-untyped-def]
    key = bytes(range(32))
    return _fastpath.PipeReader(
        None if encrypt else key,
        (lambda epoch: key[:16]) if encrypt else None,
        lambda host, port, kind, stream_id, body: messages.append((host, port, kind, body)),
    )


def _seal(encrypt: bool, epoch: bytes, counter: int, messages: bytes) -> bytes:
    import hmac

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = bytes(range(32))
    header = struct.pack("!B8sQ", 2, epoch, counter)
    if encrypt:
        return header + AESGCM(key[:16]).encrypt(bytes(4) + header[-8:], messages, header)
    return header + messages + hmac.digest(key, header + messages, "sha256")[:16]


@pytest.mark.parametrize("encrypt", [False, True], ids=["hmac", "aead"])
def test_any_datagram_is_taken_or_dropped_never_a_crash(encrypt: bool) -> None:
    rng = random.Random(14)
    messages: list[tuple[str, int, int, bytes]] = []
    reader = _fuzz_reader(encrypt, messages)
    fanout = _fastpath.Fanout()
    fanout.set_codec(96, "VP8", True)
    fanout.python_sinks = True
    publishers = [_FuzzPublisher(), _FuzzPublisher()]
    reader.add_stream("127.0.0.1", 5000, 1, fanout, publishers[0])
    reader.add_stream("::1", 5000, 2, None, publishers[1])
    epochs = [os.urandom(8) for _ in range(3)]
    counter = 0
    taken = 0
    for round_ in range(3000):
        parts = []
        for _ in range(rng.randrange(0, 5)):
            kind = rng.choice([1, 1, 1, 2, 3, 4, 5, rng.randrange(256)])
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
            if kind == 1 and rng.random() < 0.7:
                body = _rtp_body(
                    rng.choice([96, 96, 97]), rng.randrange(65536), 0, rng.random() < 0.5, body
                )
            length = len(body) if rng.random() < 0.9 else rng.randrange(65536)
            parts.append(struct.pack("!BIH", kind, rng.choice([1, 2, 3]), length) + body)
        counter += rng.choice([1, 1, 2, -3, 200])
        data = _seal(encrypt, rng.choice(epochs), max(counter, 0), b"".join(parts))
        mutation = rng.randrange(6)
        if mutation == 1:
            data = bytearray(data)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data)
        elif mutation == 2:
            data = data[: rng.randrange(len(data) + 1)]
        elif mutation == 3:
            data = os.urandom(rng.randrange(0, 80))
        host = rng.choice(["127.0.0.1", "::1", "10.0.0.1"])
        before = reader.received
        reader.receive(data, host, 5000)
        taken += reader.received - before
        if round_ == 1500:
            assert reader.remove_stream("127.0.0.1", 5000, 1)
            assert not reader.remove_stream("127.0.0.1", 5000, 1)
    assert taken > 500 and messages and publishers[0].calls and publishers[1].calls
    assert reader.windows <= 256 and reader.epochs <= 256
    for bad in (("not an address" * 10, 1), ("127.0.0.1\x00", 1)):
        with pytest.raises(ValueError):
            reader.receive(b"", *bad)
    with pytest.raises(ValueError):
        reader.receive(bytes(65536), "127.0.0.1", 1)  # more than a socket read gives
    with pytest.raises(TypeError):
        reader.add_stream("127.0.0.1", 1, 5, object(), publishers[0])
    with pytest.raises(ValueError):
        _fastpath.PipeReader(b"short", None, print)
    with pytest.raises(ValueError):
        _fastpath.PipeReader(None, None, print)


def test_the_pipe_reader_keeps_what_it_must_and_frees_the_rest() -> None:
    import gc
    import sys

    # Many sender epochs: at most MAX_EPOCHS keys and windows, and the windows let go
    # are refused (the retired list), as PipeEndpoint._fresh does.
    messages: list[tuple[str, int, int, bytes]] = []
    reader = _fuzz_reader(True, messages)
    body = struct.pack("!BIH", 5, 1, 0)
    first = os.urandom(8)
    reader.receive(_seal(True, first, 0, body), "127.0.0.1", 1)
    for index in range(300):
        reader.receive(_seal(True, index.to_bytes(8, "big"), 0, body), "127.0.0.1", 1)
    assert (reader.epochs, reader.windows, reader.received) == (256, 256, 301)
    reader.receive(_seal(True, first, 1, body), "127.0.0.1", 1)
    assert reader.dropped["replayed"] == 1
    derivations = []

    def derive(epoch: bytes) -> bytes:
        derivations.append(epoch)
        return bytes(range(16))

    forged = _fastpath.PipeReader(None, derive, print)
    for _ in range(10):
        # Version 1 (not the pipe's): malformed, whatever follows.
        forged.receive(b"\x01" + os.urandom(8) + os.urandom(40), "127.0.0.1", 1)
        forged.receive(b"\x02" + os.urandom(8) + os.urandom(40), "127.0.0.1", 1)
    assert len(derivations) == 10 and forged.epochs == 0
    assert forged.dropped["unauthenticated"] == 10 and forged.dropped["malformed"] == 10

    # Nothing kept after a reader goes: callbacks, publishers, fan-outs.
    def on_message(*args: object) -> None:
        pass

    publisher = _FuzzPublisher()
    fanout = _fastpath.Fanout()
    baseline = [sys.getrefcount(o) for o in (on_message, derive, publisher, fanout)]
    for index in range(500):
        reader = _fastpath.PipeReader(None, derive, on_message)
        for stream_id in range(20):
            reader.add_stream("127.0.0.1", 1, stream_id, fanout, publisher)
        reader.remove_stream("127.0.0.1", 1, 3)
        reader.receive(_seal(True, first, index, body), "127.0.0.1", 1)
        reader.receive(_seal(True, first, index, body), "127.0.0.1", 1)
        del reader
    gc.collect()
    assert [sys.getrefcount(o) for o in (on_message, derive, publisher, fanout)] == baseline


def test_the_pipe_reader_drains_a_socket_up_to_its_limit() -> None:
    messages: list[tuple[str, int, int, bytes]] = []
    reader = _fuzz_reader(False, messages)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        epoch = os.urandom(8)
        for counter in range(40):  # more than one recvmmsg batch
            body = struct.pack("!BIH", 4, counter, 3) + b"abc"
            client.sendto(_seal(False, epoch, counter, body), server.getsockname())
        client.sendto(bytes(60000), server.getsockname())  # a big one: malformed
        assert reader.drain(server.fileno(), 25) == 25
        assert reader.drain(server.fileno(), 64) == 16
        assert reader.drain(server.fileno(), 64) == 0  # nothing waiting
        port = client.getsockname()[1]
        assert messages == [("127.0.0.1", port, 4, b"abc")] * 40
        assert (reader.received, reader.dropped["malformed"]) == (40, 1)
    finally:
        server.close()
        client.close()
    with open(os.devnull, "rb") as not_a_socket, pytest.raises(OSError) as raised:
        reader.drain(not_a_socket.fileno(), 64)
    assert raised.value.errno == errno.ENOTSOCK


def test_a_failing_callback_is_raised_and_the_reader_goes_on() -> None:
    seen: list[int] = []

    def on_message(host: str, port: int, kind: int, stream_id: int, body: bytes) -> None:
        seen.append(stream_id)
        if stream_id == 1:
            raise RuntimeError("a bug in a handler")

    reader = _fastpath.PipeReader(bytes(range(32)), None, on_message)
    epoch = os.urandom(8)
    two = struct.pack("!BIH", 4, 1, 0) + struct.pack("!BIH", 4, 2, 0)
    with pytest.raises(RuntimeError):
        reader.receive(_seal(False, epoch, 0, two), "127.0.0.1", 1)
    assert seen == [1]  # as in Python: the rest of that datagram is not handed on
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        for counter in range(1, 4):
            client.sendto(_seal(False, epoch, counter, two), server.getsockname())
        with pytest.raises(RuntimeError):
            reader.drain(server.fileno(), 64)
        assert seen == [1, 1, 1, 1]  # every datagram read, the first error raised
        assert reader.received == 4
        assert reader.drain(server.fileno(), 64) == 0
    finally:
        server.close()
        client.close()


# -- the pipe between nodes, sending side (rtc/native/pipe_out.c) ------------------

PIPE_EPOCH = bytes.fromhex("0123456789abcdef")


def _pipe_frame(
    payload_type: int, picture: int, sequence: int, *, key: bool, size: int
) -> list[rtp.RtpView]:
    """One VP8 frame of three packets of about `size` bytes (a keyframe when `key`)."""
    views = []
    for index in range(3):
        descriptor = bytes(
            [0x90 if index == 0 else 0x80, 0x80, 0x80 | picture >> 8, picture & 0xFF]
        )
        first = (b"\x00" if key else b"\x01") if index == 0 else b""
        body = first + bytes([(picture + index) & 0xFF]) * (size - len(first))
        views.append(
            rtp.RtpView(
                1111,
                payload_type,
                (sequence + index) & 0xFFFF,
                (3000 * picture) & 0xFFFFFFFF,
                index == 2,
                descriptor + body,
            )
        )
    return views


async def _pipe_side(native: bool, encrypt: bool, receiver: socket.socket, monkeypatch):  # type: ignore[no-untyped-def]
    """A PipeEndpoint with the fixed epoch and a source sending to `receiver`, on one path."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from rtc import packet_path, pipe
    from rtc.source import PacketSource

    class Source(PacketSource):
        def _ask_upstream(self) -> None:
            pass

    # This module's build (`make asan`'s own under ASan) is the native path here.
    monkeypatch.setattr(packet_path, "_MODULE", _fastpath)
    monkeypatch.setattr(packet_path, "_native", _fastpath if native else None)
    endpoint = pipe.PipeEndpoint(PIPE_SECRET, encrypt=encrypt, max_datagram=1400)
    endpoint._epoch = PIPE_EPOCH
    endpoint._aead = AESGCM(pipe._hkdf(PIPE_SECRET, 16, pipe._AEAD_INFO, PIPE_EPOCH))
    await endpoint.start()
    assert (endpoint._writer is not None) == native
    source = Source("s", "video", keyframe_interval=0.0)
    assert (source.native_fanout is not None) == native
    return endpoint, source


def _pipe_script(endpoint, source, to) -> None:  # type: ignore[no-untyped-def]
    """Everything a sending node does on the pipe, with the ends of event-loop turns."""
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from rtc.pipe import MessageType

    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    endpoint.send_stream(source, to, 7)
    endpoint._flush()
    sequence, picture = 100, 0

    def frames(codec, count, *, key_first, size=60, turn=True):  # type: ignore[no-untyped-def]
        nonlocal sequence, picture
        for index in range(count):
            views = _pipe_frame(
                codec.payloadType, picture, sequence, key=key_first and index == 0, size=size
            )
            for view in views:
                source._on_packet(codec, view)
            sequence += 3
            picture += 1
            if turn:
                endpoint._flush()

    frames(vp8, 3, key_first=True)
    frames(vp8, 4, key_first=False, turn=False)  # one turn: a full datagram, then the rest
    endpoint._flush()
    frames(vp8, 2, key_first=True, size=500)  # packets that overflow a batch
    endpoint._send(MessageType.KEYFRAME_REQUEST, 7, b"", endpoint._outgoing[7].to)
    endpoint._outgoing[7].send_codec()  # a CODEC_REQUEST's answer, between packets
    frames(vp8, 1, key_first=False)
    # A new codec object (the same payload type), then another payload type.
    frames(
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
        2,
        key_first=False,
    )
    vp8_97 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    frames(vp8_97, 2, key_first=False)
    # Held for review, released: a restart at the next keyframe, numbered on.
    source.hold(True)
    frames(vp8_97, 2, key_first=True)
    source.hold(False)
    frames(vp8_97, 2, key_first=False)
    frames(vp8_97, 2, key_first=True)
    # A message too large for the pipe (its header cannot even say its length): counted.
    endpoint._queue(endpoint._outgoing[7].to, struct.pack("!BIH", 2, 7, 0), bytes(70_000))
    endpoint.stop_sending(7)
    endpoint._flush()


def _receive_all(receiver: socket.socket) -> list[bytes]:
    got = []
    receiver.settimeout(0.5)
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(receiver.recv(65_535))
    return got


@pytest.mark.parametrize("encrypt", [False, True], ids=["hmac", "aead"])
async def test_the_native_pipe_sends_the_python_pipes_datagrams(encrypt: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The same packets, controls and turns through a PacketSource into a PipeEndpoint on
    each path, with the same epoch: the same datagrams, and the same counters; and the
    native one's packets went through C (Python saw only a codec change or restart)."""
    from rtc import pipe

    native_pushes = []
    original = pipe._OutgoingStream._push_native

    def counted(self, *args):  # type: ignore[no-untyped-def]
        native_pushes.append(args[2].sequence_number)
        original(self, *args)

    monkeypatch.setattr(pipe._OutgoingStream, "_push_native", counted)
    datagrams, counters = [], []
    for native in (False, True):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        try:
            endpoint, source = await _pipe_side(native, encrypt, receiver, monkeypatch)
            _pipe_script(endpoint, source, receiver.getsockname())
            datagrams.append(_receive_all(receiver))
            counters.append((endpoint.sent, endpoint.messages_sent, endpoint.errors))
            await endpoint.close()
        finally:
            receiver.close()
    python, native = datagrams
    assert len(python) > 10 and 1000 < max(len(d) for d in python) <= 1400
    assert [d.hex() for d in native] == [d.hex() for d in python]
    assert counters[0] == counters[1] and counters[0][2] == 1
    # Python saw: the first packet, each codec change, each packet waiting out the restart.
    assert 0 < len(native_pushes) <= 12, native_pushes


def test_pipe_writers_and_outs_take_garbage() -> None:
    """Wrong types, bad sizes, huge bodies, a closed descriptor: refused or counted."""
    pending = []
    with pytest.raises(ValueError):
        _fastpath.PipeWriter(-1, b"short", bytes(32), False, pending.clear)
    with pytest.raises(ValueError):
        _fastpath.PipeWriter(-1, bytes(8), bytes(32), True, pending.clear)  # GCM: 16 bytes
    with pytest.raises(TypeError):
        _fastpath.PipeWriter(-1, bytes(8), bytes(32), False, 3)
    with pytest.raises(TypeError):
        _fastpath.PipeWriter("fd", bytes(8), bytes(32), False, pending.clear)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    writer = _fastpath.PipeWriter(
        sock.fileno(), bytes(8), bytes(32), False, lambda: pending.append(1)
    )
    with pytest.raises(ValueError):
        writer.destination("example.org", 1, 1000)
    with pytest.raises(ValueError):
        writer.destination("127.0.0.1", 70_000, 1000)
    for room in (0, 7, 1 << 20, -1):
        with pytest.raises(ValueError):
            writer.destination("127.0.0.1", 1, room)
    to = writer.destination("127.0.0.1", sock.getsockname()[1], 100)
    far = writer.destination("::1", 9, 100)  # another family than the socket: an error
    with pytest.raises(TypeError):
        writer.queue(to, b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        writer.queue("to", b"", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        writer.queue(to, "head", b"")  # type: ignore[arg-type]
    writer.queue(to, b"", bytes(0x10000))  # too large: counted
    assert writer.errors == 1 and writer.messages_sent == 0 and not pending
    writer.queue(to, bytes(7), bytes(40_000))  # larger than the room: a datagram of its own
    writer.queue(to, bytes(7), b"")
    writer.queue(far, bytes(7), b"")
    assert pending == [1] and writer.messages_sent == 3
    writer.flush()
    assert writer.sent == 2 and writer.errors == 2 and writer.counter == 3
    assert len(sock.recv(65_535)) == 17 + 7 + 40_000 + 16
    with pytest.raises(TypeError):
        _fastpath.PipeOut(writer, "to", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _fastpath.PipeOut(writer, to, 1 << 32)
    with pytest.raises(OverflowError):
        _fastpath.PipeOut(writer, to, -1)
    out = _fastpath.PipeOut(writer, to, 5)
    with pytest.raises(ValueError):
        out.active = True  # no codec yet
    out.send_codec()  # nothing to send yet
    with pytest.raises(TypeError):
        out.set_codec("{}", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        out.set_codec(bytes(0x10000), True)
    with pytest.raises(TypeError):
        out.push(1, 2, True, 96, b"x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        out.push(1, 2, True, 96, "x", False)  # type: ignore[arg-type]
    out.set_codec(b"{}", True)
    out.active = True
    fanout = _fastpath.Fanout()
    fanout.set_codec(96, "VP8", True)
    fanout.set_lanes((out,))
    for size in (0, 1, 0xFFFF - 7, 0xFFFF - 6, 1 << 17):
        out.push(1 << 40, -1, 2, 1000, bytes(size), True)
        fanout.push(1, 2, True, bytes(size))
    with pytest.raises(TypeError):
        fanout.set_lanes((out, writer))  # type: ignore[arg-type]
    fanout.set_codec(97, "VP8", True)
    assert not out.active
    writer.close()
    sock.close()
    messages = writer.messages_sent
    out.active = True
    out.push(1, 2, True, 96, b"x", True)  # closed: nothing queued or sent
    writer.queue(to, b"", b"")
    writer.flush()
    assert writer.messages_sent == messages and writer.closed
    writer.close()


def test_a_pipe_writer_on_a_closed_descriptor_counts_errors() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    for encrypt in (False, True):
        writer = _fastpath.PipeWriter(fd, bytes(8), bytes(16 if encrypt else 32), encrypt, list)
        to = writer.destination("127.0.0.1", 9, 1000)
        writer.queue(to, bytes(7), b"abc")
        writer.flush()
        assert writer.sent == 0 and writer.errors == 1


def test_pipe_writers_and_outs_are_freed_with_their_cycles() -> None:
    """on_pending calls back the endpoint, which holds the writer: cycles the collector frees."""
    import gc
    import weakref

    class Owner:
        def callback(self, *args: object) -> None:
            pass

    refs = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for index in range(200):
        owner = Owner()
        encrypt = index % 2 == 0
        key = bytes(16 if encrypt else 32)
        writer = _fastpath.PipeWriter(sock.fileno(), bytes(8), key, encrypt, owner.callback)
        writer.transmit = owner.callback
        out = _fastpath.PipeOut(writer, writer.destination("127.0.0.1", 9, 1000), index)
        out.set_codec(b"{}", True)
        out.push(1, 2, True, 96, bytes(2000), True)  # queued, never flushed
        fanout = _fastpath.Fanout()
        fanout.set_lanes((out,))
        owner.writer, owner.out, owner.fanout = writer, out, fanout  # type: ignore[attr-defined]
        refs.append(weakref.ref(owner))
        del owner, writer, out, fanout
    gc.collect()
    sock.close()
    assert all(ref() is None for ref in refs)


@FUZZ
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("push"),
                st.integers(0, 0xFFFF),
                st.integers(0, 0xFFFFFFFF),
                st.booleans(),
                st.binary(max_size=3000),
                st.booleans(),
            ),
            st.tuples(st.sampled_from(["restart", "codec", "flush", "control", "inactive"])),
        ),
        max_size=40,
    ),
    encrypt=st.booleans(),
    room=st.integers(8, 4000),
)
def test_whatever_a_pipe_out_sends_authenticates_and_parses(
    steps: list[tuple[object, ...]], encrypt: bool, room: int
) -> None:
    """Any sequence of packets, restarts, codec changes and flushes: every datagram the
    writer sends opens with the key and splits into whole messages (rtc.pipe's reader)."""
    import hmac

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from rtc import pipe

    epoch = bytes(range(8))
    key = (
        pipe._hkdf(PIPE_SECRET, 16, pipe._AEAD_INFO, epoch)
        if encrypt
        else pipe._hkdf(PIPE_SECRET, 32, pipe._MAC_INFO)
    )
    sent: list[bytes] = []
    writer = _fastpath.PipeWriter(0, epoch, key, encrypt, list)  # transmit: no sendto(2)
    writer.transmit = lambda data, to: sent.append(data)
    out = _fastpath.PipeOut(writer, writer.destination("127.0.0.1", 9, room), 3)
    # Another destination: control messages batched apart from the stream's.
    other = writer.destination("127.0.0.1", 10, 100)
    fanout = _fastpath.Fanout()
    fanout.set_codec(96, "VP8", True)
    fanout.set_lanes((out,))
    out.set_codec(b'{"mimeType":"video/VP8"}', True)
    out.active = True
    for step in steps:
        if step[0] == "push":
            _, seq, ts, marker, payload, direct = step
            if direct:
                out.push(seq, ts, marker, 96, payload, payload[:1] == b"\x00")
            else:
                fanout.push(seq, ts, marker, payload)
        elif step[0] == "restart":
            out.restart()
        elif step[0] == "codec":
            out.set_codec(b"{}", True)
        elif step[0] == "flush":
            writer.flush()
        elif step[0] == "control":
            writer.queue(other, struct.pack("!BIH", 4, 3, 0), b"")
        else:
            out.active = not out.active
    writer.flush()
    assert writer.counter == len(sent) == writer.sent
    for counter, data in enumerate(sent):
        version, got_epoch, got_counter = struct.unpack_from("!B8sQ", data)
        assert (version, got_epoch, got_counter) == (2, epoch, counter)
        if encrypt:
            body = AESGCM(key).decrypt(bytes(4) + data[9:17], data[17:], data[:17])
            messages = pipe._split(body, 0, len(body))
        else:
            tag = hmac.digest(key, data[:-16], "sha256")[:16]
            assert tag == data[-16:]
            messages = pipe._split(data, 17, len(data) - 16)
        assert messages, data.hex()
        assert all(stream_id == 3 for _, stream_id, _, _ in messages)


def test_piping_through_the_fanout_makes_no_python_objects() -> None:
    """Packet in, the pipe's sealed datagram out by sendto(2): Python is called once per
    flush cycle (on_pending), never per packet, and no Python object is made per packet."""
    import sys
    import tracemalloc

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        cycles: list[None] = []
        writer = _fastpath.PipeWriter(
            sender.fileno(), bytes(8), bytes(32), False, lambda: cycles.append(None)
        )
        to = writer.destination("127.0.0.1", receiver.getsockname()[1], 1400 - 33)
        outs = [_fastpath.PipeOut(writer, to, stream_id) for stream_id in range(2)]
        fanout = _fastpath.Fanout()
        fanout.set_codec(96, "VP8", True)
        fanout.set_lanes(tuple(outs))
        for out in outs:
            out.set_codec(b'{"mimeType":"video/VP8"}', True)
            out.active = True
        payload = bytes([0x90, 0x80, 0x80, 1, 0x01]) + bytes(500)
        push, flush = fanout.push, writer.flush
        for seq in range(100):
            assert not push(seq, seq * 10, True, payload)
        flush()
        cycles.clear()
        tracemalloc.start()
        blocks = sys.getallocatedblocks()
        tracemalloc.reset_peak()
        for seq in range(100, 3000):
            assert not push(seq, seq * 10, True, payload)
            if seq % 8 == 7:
                flush()
        flush()
        current, peak = tracemalloc.get_traced_memory()
        grown = sys.getallocatedblocks() - blocks
        tracemalloc.stop()
        assert len(cycles) == (3000 - 100 + 7) // 8
        assert writer.messages_sent == 2 * 3000 + 2 and writer.errors == 0
        assert grown < 50 + len(cycles) // 100, grown
        assert peak - current < 1000, (peak, current)
    finally:
        receiver.close()
        sender.close()
