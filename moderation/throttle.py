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

In a cluster every node checks logins, so per-node counts would give a guesser who
spreads guesses over N nodes N times the tries. `SharedFailures` counts the same way in
Redis (one hash per address and per moderator name, same free failures, same doubling,
on the wall clock, expiring after `forget_after + max_lockout`), and the async methods
(`wait`, `failure`, `success`, used by moderation.auth) lock out when either this
node's count or the cluster's says so. Only names that are moderators' names get a
shared record (locking a name nobody logs in with protects nobody), so rotating
invented names cannot grow Redis. When Redis does not answer within
SHARED_TIMEOUT, the node's own count still holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

from signalling.limits import address_key

logger = logging.getLogger(__name__)

# (action, target, detail) for the audit log; called for failures and lock-outs.
AuditHook = Callable[[str, str, str], None]

AUDIT_PER_MINUTE: Final = 20
# Seconds a login waits for the cluster's count before going by this node's alone.
SHARED_TIMEOUT: Final = 0.5

# One failure on one key, atomically: forget after quiet time, count, lock out past the
# free failures (doubling, capped). Returns {failures, lockout seconds as text}.
_FAIL = """
local now, forget = tonumber(ARGV[1]), tonumber(ARGV[2])
local free, first, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local f = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'l') or '0')
local locked = tonumber(redis.call('HGET', KEYS[1], 'u') or '0')
if now - last > forget then f = 0 end
f = f + 1
local lockout = 0
if f > free then
  lockout = math.min(cap, first * 2 ^ math.min(f - free - 1, 30))
  locked = now + lockout
end
redis.call('HSET', KEYS[1], 'f', f, 'l', tostring(now), 'u', tostring(locked))
redis.call('PEXPIRE', KEYS[1], math.ceil((forget + cap) * 1000))
return {f, tostring(lockout)}
"""


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
        # The cluster's count (set by the server when it runs with --redis).
        self.shared: SharedFailures | None = None
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

    # -- this node and the cluster (moderation.auth) ---------------------------------

    async def wait(self, address: str | None, name: str | None, *, known: bool) -> float:
        """`retry_after`, by this node's count or the cluster's, whichever is longer.

        `known`: `name` is a moderator's (only those have a record in the cluster)."""
        wait = self.retry_after(address, name)
        if self.shared is None or not self.free_failures:
            return wait
        keys = self._keys(address, name if known else None)
        try:
            shared = await asyncio.wait_for(self.shared.retry_after(keys), SHARED_TIMEOUT)
        except Exception as exc:  # Redis away or slow: this node's count holds alone
            logger.warning("login throttle: the cluster's count is unavailable (%r)", exc)
            return wait
        return max(wait, shared)

    async def failure(
        self, address: str | None, name: str | None, *, shown_name: str, known: bool
    ) -> None:
        """`failed` here, and counted in the cluster (a lock-out it earns is audited)."""
        self.failed(address, name, shown_name=shown_name)
        if self.shared is None or not self.free_failures:
            return
        keys = self._keys(address, name if known else None)
        try:
            counted = await asyncio.wait_for(
                self.shared.failed(keys, self, time.time()), SHARED_TIMEOUT
            )
        except Exception as exc:
            logger.warning("login throttle: could not count a failure in the cluster (%r)", exc)
            return
        for (kind, key), (failures, lockout) in zip(keys, counted, strict=True):
            local = self._tables[kind].get(key)
            if lockout > 0 and (local is None or local.failures < failures):
                target = f"address:{key}" if kind == "address" else f"name:{shown_name}"
                detail = f"{failures} failed logins on all nodes; locked for {lockout:g} s"
                self._audit("login_locked", target, detail)

    async def success(self, address: str | None, name: str | None) -> None:
        self.succeeded(address, name)
        if self.shared is None:
            return
        try:
            keys = self._keys(address, name)
            await asyncio.wait_for(self.shared.forget(keys), SHARED_TIMEOUT)
        except Exception as exc:
            logger.warning("login throttle: could not clear a record in the cluster (%r)", exc)

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


class SharedFailures:
    """Failed logins counted in Redis, for every node of a cluster."""

    def __init__(self, redis: Redis, *, key_prefix: str = "rr") -> None:
        self._redis = redis
        self._prefix = "{" + key_prefix + "}:login:"
        self._fail: Any = redis.register_script(_FAIL)

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    async def retry_after(self, keys: list[tuple[str, str]]) -> float:
        now = time.time()
        wait = 0.0
        for kind, key in keys:
            until = await self._redis.hget(self._key(kind, key), "u")
            if until is not None:
                wait = max(wait, float(until) - now)
        return wait

    async def failed(
        self, keys: list[tuple[str, str]], settings: LoginThrottle, now: float
    ) -> list[tuple[int, float]]:
        """Count one failure on each key: (failures in the cluster, lock-out seconds)."""
        out = []
        for kind, key in keys:
            failures, lockout = await self._fail(
                keys=[self._key(kind, key)],
                args=[
                    repr(now),
                    settings.forget_after,
                    settings.free_failures,
                    settings.first_lockout,
                    settings.max_lockout,
                ],
            )
            seconds = float(lockout)
            out.append((int(failures), seconds if math.isfinite(seconds) else 0.0))
        return out

    async def forget(self, keys: list[tuple[str, str]]) -> None:
        if keys:
            await self._redis.delete(*(self._key(kind, key) for kind, key in keys))
