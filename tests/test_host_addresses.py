"""Which local addresses the server offers media on (--media-ip) and what it announces."""

from __future__ import annotations

import pytest

from config import IceSettings
from rtc import aiortc_seam
from rtc.host_addresses import HostAddresses, choose, default_route_address

MACHINE = ["192.0.2.2", "172.17.0.1", "10.8.0.1", "fd00::2"]


def test_by_default_one_address_per_family_the_one_routed_to_the_internet() -> None:
    available = aiortc_seam.interface_addresses()
    routed = [a for a in (default_route_address(4), default_route_address(6)) if a]
    chosen = choose(IceSettings(), available)
    # Docker or VPN bridges are not offered: only what the default route leaves from.
    assert list(chosen.local) == ([a for a in routed if a in available] or available)


def test_media_ip_picks_addresses_or_all_of_them() -> None:
    assert choose(IceSettings(media_ips=("10.8.0.1",)), MACHINE).local == ("10.8.0.1",)
    assert choose(IceSettings(media_ips=("all",)), MACHINE).local == tuple(MACHINE)
    with pytest.raises(ValueError, match=r"198.51.100.1 is not an address of this machine"):
        choose(IceSettings(media_ips=("198.51.100.1",)), MACHINE)


def test_announced_address_replaces_or_joins_the_local_one_of_its_family() -> None:
    ice = IceSettings(media_ips=("10.8.0.1", "fd00::2"), announce_ips=("203.0.113.7",))
    hosts = choose(ice, MACHINE)
    assert hosts.advertised("10.8.0.1") == ["203.0.113.7"]
    assert hosts.advertised("fd00::2") == ["fd00::2"]
    kept = HostAddresses(("10.8.0.1",), ((4, "203.0.113.7"),), keep_local=True)
    assert kept.advertised("10.8.0.1") == ["203.0.113.7", "10.8.0.1"]
    assert "10.8.0.1 as 203.0.113.7 and 10.8.0.1" in kept.describe()
    with pytest.raises(ValueError, match="no IPv6 address to announce"):
        choose(IceSettings(media_ips=("10.8.0.1",), announce_ips=("2001:db8::7",)), MACHINE)
