"""LoginThrottle: free failures, growing lock-outs, forgetting, bounded memory and audit."""

from __future__ import annotations

from moderation.throttle import AUDIT_PER_MINUTE, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **kwargs: float) -> LoginThrottle:
    options = {"free_failures": 2, "first_lockout": 2.0, "max_lockout": 60.0} | kwargs
    return LoginThrottle(clock=clock, **options)  # type: ignore[arg-type]


def test_lockouts_double_up_to_the_cap() -> None:
    clock = Clock()
    t = throttle(clock)
    t.failed("192.0.2.1", "alice", shown_name="alice")
    t.failed("192.0.2.1", "alice", shown_name="alice")
    assert t.retry_after("192.0.2.1") == 0
    waits = []
    for _ in range(7):
        t.failed("192.0.2.1", "alice", shown_name="alice")
        waits.append(t.retry_after("192.0.2.1"))
    assert waits == [2, 4, 8, 16, 32, 60, 60]
    assert t.retry_after(None, "alice") == 60
    assert t.retry_after("192.0.2.2", "bob") == 0
    assert t.retry_after("2001:db8::1") == 0
    clock.now += 60
    assert t.retry_after("192.0.2.1", "alice") == 0


def test_ipv6_addresses_share_their_64() -> None:
    clock = Clock()
    t = throttle(clock, free_failures=1)
    t.failed("2001:db8::1", None, shown_name="a token")
    t.failed("2001:db8::2", None, shown_name="a token")
    assert t.retry_after("2001:db8::ffff") == 2


def test_success_and_time_forget_failures() -> None:
    clock = Clock()
    t = throttle(clock, forget_after=100)
    t.failed("192.0.2.1", "alice", shown_name="alice")
    t.failed("192.0.2.1", "alice", shown_name="alice")
    t.succeeded("192.0.2.1", "alice")
    t.failed("192.0.2.1", "alice", shown_name="alice")
    assert t.retry_after("192.0.2.1", "alice") == 0
    t.failed("192.0.2.1", "alice", shown_name="alice")
    clock.now += 101
    t.failed("192.0.2.1", "alice", shown_name="alice")  # the first of a new series
    assert t.retry_after("192.0.2.1", "alice") == 0


def test_memory_is_bounded_when_names_and_addresses_rotate() -> None:
    clock = Clock()
    t = throttle(clock, max_entries=100)
    for i in range(5000):
        t.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"name{i}", shown_name="x")
    assert len(t) == 200


def test_the_audit_log_is_rationed() -> None:
    clock = Clock()
    t = throttle(clock)
    entries: list[tuple[str, str, str]] = []
    t.audit = lambda *entry: entries.append(entry)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", "alice", shown_name="alice")
    assert len(entries) == AUDIT_PER_MINUTE
    assert {e[0] for e in entries} == {"login_failed", "login_locked"}
    clock.now += 61
    t.failed("192.0.2.1", "alice", shown_name="alice")
    assert any("earlier login events not logged" in e[2] for e in entries[AUDIT_PER_MINUTE:])


def test_zero_free_failures_turns_it_off() -> None:
    clock = Clock()
    t = throttle(clock, free_failures=0)
    for _ in range(100):
        t.failed("192.0.2.1", "alice", shown_name="alice")
    assert t.retry_after("192.0.2.1", "alice") == 0
    assert len(t) == 0
