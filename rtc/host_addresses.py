"""Which local addresses the server offers media on, and which address it announces for them.

aioice on its own binds a socket on every interface address (docker and VPN
bridges included) and offers each in every answer: more sockets, more
candidate pairs to check, and addresses nobody outside can reach. By default
the server offers one address per family, the one its default route leaves
from: what a client on the internet reaches. `--media-ip` names others, or
`all`.

Behind a 1:1 NAT (a cloud VM's public IP) the interface address is private:
`--announce-ip` puts the public one into the host candidate instead (or besides
it, `--announce-keep-local`), as mediasoup's announcedAddress and Janus's
nat_1_1_mapping do, with no STUN round trip per connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from config import ALL_ADDRESSES, IceSettings

# Destinations for a route lookup only: connect() on a UDP socket sends nothing,
# it asks the kernel which source address the default route would use.
_ROUTE_PROBES = {4: ("8.8.8.8", socket.AF_INET), 6: ("2001:4860:4860::8888", socket.AF_INET6)}


def default_route_address(version: int) -> str | None:
    """This machine's source address towards the internet for IPv`version`, or None."""
    target, family = _ROUTE_PROBES[version]
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return str(probe.getsockname()[0])
    except OSError:  # no route for this family
        return None


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


@dataclass(frozen=True)
class HostAddresses:
    """The local addresses to gather on, and what each is offered as."""

    local: tuple[str, ...]
    # IP version -> the public address announced for local addresses of that family.
    announce: tuple[tuple[int, str], ...] = ()
    keep_local: bool = False

    def advertised(self, local: str) -> list[str]:
        """The addresses a host candidate on `local` is offered as, in the answer."""
        announced = dict(self.announce).get(_version(local))
        if announced is None:
            return [local]
        return [announced, local] if self.keep_local else [announced]

    def describe(self) -> str:
        return ", ".join(
            f"{local} as {' and '.join(self.advertised(local))}"
            if self.advertised(local) != [local]
            else local
            for local in self.local
        )


def choose(ice: IceSettings, available: Sequence[str]) -> HostAddresses:
    """Apply `--media-ip` to this machine's addresses; ValueError says what is wrong."""
    if ice.media_ips == (ALL_ADDRESSES,):
        local = list(available)
    elif ice.media_ips:
        for address in ice.media_ips:
            if address not in available:
                raise ValueError(
                    f"--media-ip {address} is not an address of this machine "
                    f"(it has {', '.join(available) or 'none'})"
                )
        local = list(ice.media_ips)
    else:
        routed = [default_route_address(version) for version in (4, 6)]
        local = [a for a in routed if a is not None and a in available]
        if not local:
            # No default route at all (an offline machine, a closed test network):
            # every address is as good a guess as any.
            local = list(available)
    if not local:
        raise ValueError("this machine has no address to offer media on (--media-ip)")
    announce = tuple((_version(a), a) for a in ice.announce_ips)
    families = {_version(a) for a in local}
    for version, address in announce:
        if version not in families:
            raise ValueError(
                f"--announce-ip {address}: the server offers no IPv{version} address to "
                f"announce it for (it offers {', '.join(local)})"
            )
    return HostAddresses(tuple(local), announce, ice.announce_keep_local)
