"""Pseudonyms: keyed hashes of a browser identity and an address.

Reports and blocks must outlive a visit (a ban made after the person left, a
block that holds for days), but the raw client id and address are not needed
for that: a keyed hash (HMAC-SHA256 with a key kept in the moderation store) is
compared instead. Without the key an IPv4 address cannot be recovered from its
hash by trying all 2^32; with the store at hand it can, so this keeps values
out of logs, dashboards and the matcher (Redis), not away from the database's owner.

Addresses are hashed as the per-address limits count them (signalling/limits.py):
IPv4 as is, IPv6 by its /64, so an address ban reaches a household, not one of
its rotating privacy addresses.
"""

from __future__ import annotations

import hashlib
import hmac

from signalling.limits import address_key

# 96 bits of a hash: unique among any number of visitors a server will ever see.
_HEX_CHARS = 24


class Pseudonyms:
    """Turns identities and addresses into stable, unlinkable-without-the-key keys."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = key

    def _hash(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
        return digest[:_HEX_CHARS]

    def person(self, identity: str | None) -> str | None:
        """The key of a browser identity (the page's client id); None without one."""
        return None if not identity else self._hash("identity", identity)

    def address(self, ip: str | None) -> str | None:
        """The key of an address (IPv6 by its /64); None without one."""
        key = address_key(ip)
        return None if key is None else self._hash("address", key)
