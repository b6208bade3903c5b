"""PostgreSQL's own side of the moderation store: migrations, nodes starting together, errors.

The behaviour both backends share is the contract suite (tests taking `open_store` in
tests/test_moderation_store.py and tests/test_moderation_queue.py).
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from moderation import store_pg
from moderation.store import SchemaError
from moderation.store_pg import PostgresModerationStore
from moderation.store_protocol import open_store

NOW = 1_700_000_000.0


def test_schema_is_versioned_and_a_later_step_runs_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresModerationStore(postgres_url) as store:
        assert store.schema_version == len(store_pg.MIGRATIONS)
        store.add_report("a", "b", "why", now=NOW)
        key = store.pseudonym_key()
        assert len(key) == 32

    later = (*store_pg.MIGRATIONS, ("ALTER TABLE reports ADD COLUMN severity INTEGER",))
    monkeypatch.setattr(store_pg, "MIGRATIONS", later)
    with PostgresModerationStore(postgres_url) as store:
        assert store.schema_version == len(later)
        assert len(store.reports()) == 1
        assert store.pseudonym_key() == key  # made once, never replaced
    with PostgresModerationStore(postgres_url) as store:  # reopening runs nothing again
        assert store.schema_version == len(later)
    with psycopg.connect(postgres_url) as db:
        columns = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'reports' "
            "ORDER BY ordinal_position"
        ).fetchall()
        assert columns[-1] == ("severity",)

    # Code older than the database refuses it instead of misreading it.
    monkeypatch.setattr(store_pg, "MIGRATIONS", later[:-1])
    with pytest.raises(SchemaError, match="schema version 2"):
        PostgresModerationStore(postgres_url)


def test_nodes_opening_a_new_database_at_once_share_one_schema_and_key(postgres_url: str) -> None:
    keys: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def node() -> None:
        try:
            start.wait()
            with PostgresModerationStore(postgres_url, pool_size=1) as store:
                keys.append(store.pseudonym_key())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(keys) == 6 and len(set(keys)) == 1


def test_open_store_picks_the_backend_from_db(postgres_url: str, tmp_path) -> None:
    store = open_store(postgres_url)
    try:
        assert isinstance(store, PostgresModerationStore)
    finally:
        store.close()
    path = tmp_path / "new" / "m.sqlite3"
    store = open_store(str(path))
    try:
        assert not isinstance(store, PostgresModerationStore) and path.exists()
    finally:
        store.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.target import free_port

    monkeypatch.setattr(store_pg, "CONNECT_SECONDS", 1.0)
    url = f"postgresql://relay:s3cret@127.0.0.1:{free_port()}/relay"
    with pytest.raises(ConnectionError, match="cannot reach the moderation database") as info:
        PostgresModerationStore(url)
    assert "s3cret" not in str(info.value)
