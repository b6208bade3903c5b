"""rtc/_fastpath.c against what the Python path does, byte for byte, and under garbage.

The reference is the Python packet path itself: pylibsrtp (libsrtp, the
library aiortc's own sessions use) for SRTP, and rtc.rtp's header writer, VP8
picture-id rewrite and RTX payload for the rest. Same keys, same packets: the
two must send the same bytes and read each other's. `make asan` runs this file
against a build with AddressSanitizer.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import struct
from collections.abc import Callable
from types import ModuleType

import pylibsrtp
import pytest
from aiortc.rate import RemoteBitrateEstimator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc import rtp


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
