"""LoginThrottle: free failures, growing lock-outs, forgetting, bounded memory and audit."""

from __future__ import annotations

from redis.asyncio import Redis

from moderation.throttle import AUDIT_PER_MINUTE, LoginThrottle, SharedFailures


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


async def test_two_nodes_share_one_count_in_redis(redis_url: str) -> None:
    # Two throttles (two nodes) on one real redis-server: failures add up, the cluster's
    # lock-out doubles like a node's, a success clears it, and only moderators' names
    # get a record there (invented names cannot grow Redis).
    redis = Redis.from_url(redis_url, decode_responses=True)
    one, two = LoginThrottle(free_failures=2), LoginThrottle(free_failures=2)
    for node in (one, two):
        node.shared = SharedFailures(redis, key_prefix="throttle-test")
    try:
        await one.failure("192.0.2.9", "alice", shown_name="alice", known=True)
        await two.failure("192.0.2.9", "alice", shown_name="alice", known=True)
        assert await one.wait("192.0.2.9", "alice", known=True) == 0
        await two.failure("192.0.2.9", "alice", shown_name="alice", known=True)
        # Node one saw one failure of the three, yet refuses, by address and by name.
        assert 1.5 < await one.wait("192.0.2.9", None, known=False) <= 2
        assert 1.5 < await one.wait("198.51.100.1", "alice", known=True) <= 2
        await one.failure("192.0.2.9", "alice", shown_name="alice", known=True)
        assert 3.5 < await two.wait("192.0.2.9", None, known=False) <= 4
        await one.success("192.0.2.9", "alice")
        assert await two.wait("192.0.2.9", "alice", known=True) == 0

        await one.failure("192.0.2.10", "mallory", shown_name="an unknown name", known=False)
        assert await redis.keys("{throttle-test}:login:name:*") == []
    finally:
        await redis.delete(*await redis.keys("{throttle-test}:*") or ["none"])
        await redis.aclose()


async def test_without_redis_each_node_still_counts_its_own() -> None:
    gone = Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=0.2)
    node = LoginThrottle(free_failures=1)
    node.shared = SharedFailures(gone)
    try:
        for _ in range(2):
            await node.failure("192.0.2.9", None, shown_name="a token", known=False)
        assert await node.wait("192.0.2.9", None, known=False) > 0
    finally:
        await gone.aclose()
