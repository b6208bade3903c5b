"""rtc/_fastpath.c against what the Python path does, byte for byte, and under garbage.

The reference is the Python packet path itself: pylibsrtp (libsrtp, the
library aiortc's own sessions use) for SRTP, and rtc.rtp's header writer, VP8
picture-id rewrite and RTX payload for the rest. Same keys, same packets: the
two must send the same bytes and read each other's. `make asan` runs this file
against a build with AddressSanitizer.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import random
import socket
import struct
from types import ModuleType

import pylibsrtp
import pytest
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
