"""AddressLimits: counting per address (IPv6 by /64), refusing past the limits, releasing."""

from __future__ import annotations

import pytest

from signalling.limits import WINDOW, AddressLimits, LimitExceeded, LimitSettings, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ipv6_is_counted_by_its_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff::9") == address_key("2001:db8:1:2::1")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("not an address") == "not an address"
    assert address_key(None) is None


def test_sessions_past_the_limit_are_refused_until_one_is_released() -> None:
    limits = AddressLimits(LimitSettings(max_sessions=2, max_peers=0, max_new_sessions=0))
    a = limits.open_session("192.0.2.1")
    limits.open_session("192.0.2.1")
    with pytest.raises(LimitExceeded) as refused:
        limits.open_session("192.0.2.1")
    assert refused.value.code == "too_many_sessions"
    limits.open_session("192.0.2.2")  # another address has its own count
    a.release()
    a.release()  # twice is harmless: the count does not go below what is held
    assert limits.sessions("192.0.2.1") == 1
    limits.open_session("192.0.2.1")
    assert limits.refused["too_many_sessions"] == 1


def test_a_64_shares_one_count() -> None:
    limits = AddressLimits(LimitSettings(max_sessions=1, max_peers=1, max_new_sessions=0))
    limits.open_session("2001:db8::1")
    limits.open_peer("2001:db8::1")
    with pytest.raises(LimitExceeded, match="from your network"):
        limits.open_session("2001:db8::ffff:2")
    with pytest.raises(LimitExceeded) as refused:
        limits.open_peer("2001:db8::3")
    assert refused.value.code == "too_many_peers"
    limits.open_session("2001:db8:0:1::1")


def test_new_sessions_per_minute_slide() -> None:
    clock = Clock()
    limits = AddressLimits(
        LimitSettings(max_sessions=0, max_peers=0, max_new_sessions=3), clock=clock
    )
    for _ in range(3):
        limits.open_session("192.0.2.1").release()  # closing does not give the start back
        clock.now += 10
    with pytest.raises(LimitExceeded) as refused:
        limits.open_session("192.0.2.1")
    assert refused.value.code == "too_many_new_sessions"
    assert "try again in 30 s" in refused.value.message
    clock.now += 30  # the first start is a minute old
    limits.open_session("192.0.2.1")
    with pytest.raises(LimitExceeded):
        limits.open_session("192.0.2.1")


def test_zero_means_no_limit_and_no_address_is_not_counted() -> None:
    limits = AddressLimits(LimitSettings(max_sessions=0, max_peers=0, max_new_sessions=0))
    for _ in range(1000):
        limits.open_session("192.0.2.1")
        limits.open_peer("192.0.2.1")
    strict = AddressLimits(LimitSettings(max_sessions=1, max_peers=1, max_new_sessions=1))
    for _ in range(10):
        strict.open_session(None)
        strict.open_peer(None)
    assert strict.tracked_addresses == 0


def test_memory_follows_what_is_held_not_what_was_tried() -> None:
    clock = Clock()
    limits = AddressLimits(
        LimitSettings(max_sessions=1, max_peers=1, max_new_sessions=5), clock=clock
    )
    slots = [limits.open_session(f"10.0.{i // 256}.{i % 256}") for i in range(2000)]
    peers = [limits.open_peer(f"10.0.{i // 256}.{i % 256}") for i in range(2000)]
    for slot in slots + peers:
        slot.release()
    assert limits.sessions("10.0.0.1") == limits.peers("10.0.0.1") == 0
    # Only the new-session window still remembers them, for one window.
    clock.now += WINDOW + 1
    limits.open_session("192.0.2.1")
    assert limits.tracked_addresses == 1
