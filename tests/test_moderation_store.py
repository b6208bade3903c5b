"""The moderation store contract on both backends; SQLite's own file handling.

Tests taking `open_store` are the contract suite: each runs on a real SQLite file and
on a real PostgreSQL server (tests/postgres_server.py). Schema migrations are checked
per backend, here (SQLite) and in tests/test_moderation_store_pg.py."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moderation import store as store_module
from moderation.store import (
    ModerationStore,
    ReportStatus,
    SchemaError,
    TranscriptLine,
    normalize_ip,
)

NOW = 1_700_000_000.0

# Opens the store under test: the tests taking it are the contract every backend keeps
# (conftest's `open_store` runs each on SQLite and on a real PostgreSQL server).
OpenStore = Callable[[], ModerationStore]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "moderation.sqlite3"


def test_reports_are_kept_reviewed_and_survive_reopening(open_store: OpenStore) -> None:
    transcript = (TranscriptLine(NOW - 5, "rep", "hi"), TranscriptLine(NOW - 3, "bad", "ugh ✋"))
    with open_store() as store:
        first = store.add_report("rep", "bad", "nudity", transcript=transcript, now=NOW)
        second = store.add_report("rep2", "bad", "spam", now=NOW + 1)
        other = store.add_report("rep3", "fine", "mistake", now=NOW + 2)
        assert first.status == ReportStatus.OPEN
        assert (first.reviewed_by, first.reviewed_at, first.evidence_path) == (None, None, None)
        store.set_evidence(first.id, "/evidence/abc.webm")
        reviewed = store.review_report(second.id, "alice", note="warned", now=NOW + 60)
        assert reviewed.status == ReportStatus.REVIEWED
        assert (reviewed.reviewed_by, reviewed.reviewed_at) == ("alice", NOW + 60)
        with pytest.raises(KeyError):
            store.review_report(999, "alice")
        with pytest.raises(KeyError):
            store.set_evidence(999, "/x.webm")

    with open_store() as store:
        again = store.report(first.id)
        assert again is not None
        assert again.transcript == transcript
        assert again.evidence_path == "/evidence/abc.webm"
        assert again.created_at == NOW
        assert store.report(second.id) == reviewed
        assert [r.id for r in store.reports()] == [other.id, second.id, first.id]
        assert [r.id for r in store.reports(status=ReportStatus.OPEN)] == [other.id, first.id]
        assert [r.id for r in store.reports(reported_id="bad")] == [second.id, first.id]
        page = store.reports(limit=2)
        assert [r.id for r in store.reports(before_id=page[-1].id)] == [first.id]
        assert store.report(999) is None
        (entry,) = store.audit_log()
        assert (entry.who, entry.action, entry.target, entry.detail, entry.at) == (
            "alice",
            "review_report",
            f"report:{second.id}",
            "warned",
            NOW + 60,
        )


def test_bans_by_identity_ip_or_both_expire_and_lift(open_store: OpenStore) -> None:
    with open_store() as store:
        by_identity = store.add_ban(
            identity="device-1", reason="spam", created_by="alice", expires_at=NOW + 3600, now=NOW
        )
        by_ip = store.add_ban(ip="::ffff:203.0.113.7", reason="abuse", created_by="bob", now=NOW)
        both = store.add_ban(
            identity="device-2",
            ip="2001:db8::1",
            reason="threats",
            created_by="alice",
            expires_at=NOW + 60,
            now=NOW,
        )
        with pytest.raises(ValueError):
            store.add_ban(reason="nobody", created_by="alice")

    with open_store() as store:
        assert store.active_ban("device-1", None, NOW + 10) == by_identity
        assert store.active_ban("device-1", None, NOW + 3600) is None  # expired
        # The IPv4-mapped spelling a dual-stack socket reports is the same host.
        assert by_ip.ip == "203.0.113.7"
        assert store.active_ban(None, "203.0.113.7", NOW + 10**6) == by_ip  # for good
        assert store.active_ban("someone-else", "::ffff:203.0.113.7", NOW) == by_ip
        assert store.active_ban("device-2", None, NOW + 10) == both
        assert store.active_ban(None, "2001:DB8:0::1", NOW + 10) == both
        assert store.active_ban("device-3", "198.51.100.1", NOW) is None
        assert store.active_ban(None, None, NOW) is None
        # Matched on both counts: the longest-lasting ban answers.
        assert store.active_ban("device-1", "203.0.113.7", NOW) == by_ip

        lifted = store.lift_ban(by_ip.id, "carol", now=NOW + 100)
        assert lifted.expires_at == NOW + 100
        assert store.active_ban(None, "203.0.113.7", NOW + 101) is None
        # Lifting an expired ban does not bring it back or move its expiry.
        assert store.lift_ban(both.id, "carol", now=NOW + 200).expires_at == NOW + 60
        with pytest.raises(KeyError):
            store.lift_ban(999, "carol")
        assert [b.id for b in store.bans()] == [both.id, by_ip.id, by_identity.id]
        assert [b.id for b in store.bans(active_at=NOW + 150)] == [by_identity.id]
        actions = [(e.who, e.action, e.target) for e in store.audit_log()]
        assert actions == [
            ("carol", "lift_ban", f"ban:{both.id}"),
            ("carol", "lift_ban", f"ban:{by_ip.id}"),
            ("alice", "ban", f"ban:{both.id}"),
            ("bob", "ban", f"ban:{by_ip.id}"),
            ("alice", "ban", f"ban:{by_identity.id}"),
        ]
        assert (
            "identity=device-2 ip=2001:db8::1"
            in store.audit_log(target=f"ban:{both.id}")[-1].detail
        )


def test_audit_log_pages_newest_first_and_survives_reopening(open_store: OpenStore) -> None:
    with open_store() as store:
        for index in range(5):
            store.audit("alice", "watch", f"session:{index % 2}", f"#{index}", now=NOW + index)
    with open_store() as store:
        entries = store.audit_log()
        assert [e.detail for e in entries] == ["#4", "#3", "#2", "#1", "#0"]
        assert [e.detail for e in store.audit_log(target="session:1")] == ["#3", "#1"]
        assert [e.detail for e in store.audit_log(limit=2, before_id=entries[1].id)] == ["#2", "#1"]


def test_schema_is_created_in_wal_mode_and_migrated_once(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModerationStore(path) as store:
        assert store.schema_version == len(store_module.MIGRATIONS)
        store.add_report("a", "b", "why", now=NOW)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    # A later release adds a step: only that step runs, and the data stays.
    later = (*store_module.MIGRATIONS, ("ALTER TABLE reports ADD COLUMN severity INTEGER",))
    monkeypatch.setattr(store_module, "MIGRATIONS", later)
    with ModerationStore(path) as store:
        assert store.schema_version == len(later)
        assert len(store.reports()) == 1
    with ModerationStore(path) as store:  # reopening runs nothing again
        assert store.schema_version == len(later)
    with contextlib.closing(sqlite3.connect(path)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(reports)")]
        assert columns[-1] == "severity"

    # Code older than the file refuses it instead of misreading it.
    monkeypatch.setattr(store_module, "MIGRATIONS", later[:-1])
    with pytest.raises(SchemaError):
        ModerationStore(path)


async def test_calls_from_many_threads_through_to_thread(open_store: OpenStore) -> None:
    with open_store() as store:

        async def report(index: int) -> int:
            made = await asyncio.to_thread(store.add_report, f"r{index}", "x", "spam")
            ban = await asyncio.to_thread(store.active_ban, "x", None)
            assert ban is None
            return made.id

        ids = await asyncio.gather(*(report(index) for index in range(200)))
        assert sorted(ids) == list(range(1, 201))
        assert len(await asyncio.to_thread(store.reports, limit=1000)) == 200


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("2001:DB8::0001") == "2001:db8::1"
    assert normalize_ip(" 10.0.0.1 ") == "10.0.0.1"
    assert normalize_ip("not an address") == "not an address"


def _open_store(path: str, start: Any) -> None:
    start.wait()
    ModerationStore(path).close()


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path) -> None:
    # `--workers N` starts N processes on one --db at the same moment.
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    path = str(tmp_path / "shared.sqlite3")
    processes = [context.Process(target=_open_store, args=(path, start)) for _ in range(6)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 6
    with ModerationStore(path) as store:
        assert store.reports() == []
