"""LoginThrottle: failed moderator logins lock out an address and a name, growing each time.

A few failures are free (typos); after that each failure locks its address
(an IPv6 /64) and the name it tried for `first_lockout` seconds, doubling up
to `max_lockout`. While either is locked every attempt, right or wrong, is
refused without being checked, so a lock-out tells a guesser nothing.
Failures are forgotten after `forget_after` quiet seconds.

Locking by name protects a moderator from guessers on many addresses, at a
price: anyone can keep a moderator locked out by failing under their name
(for at most `max_lockout` at a time). Moderators whose name is known to the
public should have a second name.

Memory stays bounded: each table keeps at most `max_entries` records and
forgets the least recently failed first, so rotating names or addresses
cannot grow it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from signalling.limits import address_key

# (action, target, detail) for the audit log; called for failures and lock-outs.
AuditHook = Callable[[str, str, str], None]

AUDIT_PER_MINUTE: Final = 20


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Failure counts per address and per name, and the lock-outs they earn."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_lockout: float = 2.0,
        max_lockout: float = 300.0,
        forget_after: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # free_failures 0: no throttling at all.
        self.free_failures = free_failures
        self.first_lockout = first_lockout
        self.max_lockout = max_lockout
        self.forget_after = forget_after
        self.max_entries = max_entries
        self.audit: AuditHook | None = None
        self._clock = clock
        self._tables: dict[str, OrderedDict[str, _Record]] = {
            "address": OrderedDict(),
            "name": OrderedDict(),
        }
        # Audit entries are rationed (an attacker must not fill the audit log);
        # what is left out is counted into the next entry.
        self._audit_window = clock()
        self._audited = 0
        self._unaudited = 0

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def _keys(self, address: str | None, name: str | None) -> list[tuple[str, str]]:
        keys = []
        if (key := address_key(address)) is not None:
            keys.append(("address", key))
        if name is not None:
            keys.append(("name", name[:64]))
        return keys

    def retry_after(self, address: str | None, name: str | None = None) -> float:
        """Seconds until `address` and `name` may try again; 0 when they may now."""
        if not self.free_failures:
            return 0.0
        now = self._clock()
        wait = 0.0
        for kind, key in self._keys(address, name):
            record = self._tables[kind].get(key)
            if record is not None:
                wait = max(wait, record.locked_until - now)
        return wait

    def failed(self, address: str | None, name: str | None, *, shown_name: str) -> None:
        """One failed attempt; `shown_name` is what the audit log may say about the name."""
        if not self.free_failures:
            return
        now = self._clock()
        for kind, key in self._keys(address, name):
            table = self._tables[kind]
            record = table.pop(key, None) or _Record()
            table[key] = record  # most recent last: the oldest are evicted first
            while len(table) > self.max_entries:
                table.popitem(last=False)
            if now - record.last_failure > self.forget_after:
                record.failures = 0
            record.failures += 1
            record.last_failure = now
            target = f"address:{key}" if kind == "address" else f"name:{shown_name}"
            over = record.failures - self.free_failures
            if over > 0:
                lockout = min(self.max_lockout, self.first_lockout * 2 ** min(over - 1, 30))
                record.locked_until = now + lockout
                self._audit(
                    "login_locked",
                    target,
                    f"{record.failures} failed logins; locked for {lockout:g} s",
                )
            elif kind == "address":  # one entry per failure, not one per table
                self._audit("login_failed", target, f"tried {shown_name}")

    def succeeded(self, address: str | None, name: str | None) -> None:
        for kind, key in self._keys(address, name):
            self._tables[kind].pop(key, None)

    def _audit(self, action: str, target: str, detail: str) -> None:
        if self.audit is None:
            return
        now = self._clock()
        if now - self._audit_window >= 60:
            self._audit_window, self._audited = now, 0
        if self._audited >= AUDIT_PER_MINUTE:
            self._unaudited += 1
            return
        self._audited += 1
        if self._unaudited:
            detail += f" ({self._unaudited} earlier login events not logged)"
            self._unaudited = 0
        self.audit(action, target, detail)
