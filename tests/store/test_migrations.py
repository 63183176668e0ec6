"""Migrations: a database built from all of them has exactly the committed schema.

``expected_schema_<dialect>.txt`` describes the schema as the database's own
catalog reports it (tables, columns, types, nullability, defaults, constraints,
indexes, triggers). A migration that changes the schema fails this test until
the description is regenerated and reviewed with it:

    .venv/bin/python tests/store/test_migrations.py   # rewrites both files
"""

from __future__ import annotations

import re
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stackshift import StackShift
from stackshift.store import open_store
from stackshift.store.queries import load_migrations
from stackshift.testing import FakeClock, run_until_idle

HERE = Path(__file__).parent


def expected_file(dialect: str) -> Path:
    return HERE / f"expected_schema_{dialect}.txt"


def _normalise(sql: str) -> str:
    """SQL text without comments and with single spaces."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return re.sub(r"\s+", " ", sql).strip()


def describe_sqlite(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        lines: list[str] = []
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for table in tables:
            lines.append(f"table {table}")
            for _cid, name, type_, notnull, default, pk in conn.execute(
                    f"PRAGMA table_info({table})"):
                lines.append(
                    f"  column {name} {type_ or '-'}"
                    f"{' not null' if notnull else ' null'}"
                    f"{f' default {default}' if default is not None else ''}"
                    f"{f' pk{pk}' if pk else ''}"
                )
            for fk in conn.execute(f"PRAGMA foreign_key_list({table})"):
                lines.append(f"  foreign key ({fk[3]}) references {fk[2]} ({fk[4]})"
                             f" on delete {fk[6].lower()}")
            (create,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            lines.append(f"  sql {_normalise(create)}")
            for name, sql in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = ? ORDER BY name", (table,)):
                if sql is None:  # made by a PRIMARY KEY or UNIQUE constraint
                    cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                    lines.append(f"  index {name} (implicit) on ({', '.join(cols)})")
                else:
                    lines.append(f"  index {_normalise(sql)}")
            for name, sql in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                    " AND tbl_name = ? ORDER BY name", (table,)):
                lines.append(f"  trigger {name}: {_normalise(sql)}")
        return "\n".join(lines) + "\n"
    finally:
        conn.close()


def describe_postgres(url: str, schema: str) -> str:
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    conninfo, _ = parse_postgres_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        lines: list[str] = []
        tables = conn.execute(
            "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname", (schema,)
        ).fetchall()
        for oid, table in tables:
            lines.append(f"table {table}")
            for name, type_, notnull, default, identity, collation in conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
                " pg_get_expr(d.adbin, d.adrelid), a.attidentity,"
                " CASE WHEN a.attcollation <> t.typcollation THEN co.collname END"
                " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                " LEFT JOIN pg_collation co ON co.oid = a.attcollation"
                " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum", (oid,)
            ):
                lines.append(
                    f"  column {name} {type_}"
                    f"{f' collate {collation}' if collation else ''}"
                    f"{' not null' if notnull else ' null'}"
                    f"{f' default {default}' if default is not None else ''}"
                    f"{' identity by default' if identity == 'd' else ''}"
                    f"{' identity always' if identity == 'a' else ''}"
                )
            for name, definition in conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s ORDER BY conname", (oid,)
            ):
                lines.append(f"  constraint {name}: {definition}")
            for (definition,) in conn.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s"
                " ORDER BY c.relname", (oid,)
            ):
                lines.append(f"  index {definition}")
            for (definition,) in conn.execute(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname", (oid,)
            ):
                lines.append(f"  trigger {definition}")
        for name, args, source in conn.execute(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s ORDER BY p.proname", (schema,)
        ):
            lines.append(f"function {name}({args}): {_normalise(source)}")
    # Definitions name the (random) schema; the description must not.
    return "\n".join(lines).replace(f"{schema}.", "") + "\n"


def build_and_describe(db_url: str) -> tuple[str, int]:
    """Apply every migration to the empty database at ``db_url``; describe what results."""
    store = open_store(db_url)
    try:
        version = store.migrate()
    finally:
        store.close()
    if db_url.startswith("sqlite"):
        return describe_sqlite(db_url.removeprefix("sqlite:///")), version
    schema = re.search(r"[?&]schema=(\w+)", db_url)
    assert schema, "PostgreSQL tests run in a schema of their own"
    return describe_postgres(db_url, schema.group(1)), version


def _dialect(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgres"


def test_all_migrations_build_the_expected_schema(db_url: str) -> None:
    dialect = _dialect(db_url)
    described, version = build_and_describe(db_url)
    expected = expected_file(dialect).read_text()
    assert described == expected, (
        f"the {dialect} schema built from the migrations differs from {expected_file(dialect)}"
        " (regenerate it with: .venv/bin/python tests/store/test_migrations.py)"
    )
    assert version == len(load_migrations(dialect))


def test_both_dialects_have_the_same_tables_and_columns() -> None:
    """A migration added for one dialect only shows up here."""
    def tables(text: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("table "):
                current = found.setdefault(line.split()[1], [])
            elif line.startswith("  column "):
                current.append(line.split()[1])
        return found

    assert tables(expected_file("sqlite").read_text()) == tables(
        expected_file("postgres").read_text())
    assert [v for v, _, _ in load_migrations("sqlite")] == [
        v for v, _, _ in load_migrations("postgres")]


def test_migrating_again_changes_nothing(db_url: str) -> None:
    before, version = build_and_describe(db_url)
    after, again = build_and_describe(db_url)
    assert (after, again) == (before, version)


def test_processes_starting_together_apply_each_migration_once(db_url: str) -> None:
    """Eight stores migrate one empty database at the same moment."""
    barrier = threading.Barrier(8)
    versions: list[int] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        store = open_store(db_url)
        try:
            barrier.wait()
            versions.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = len(load_migrations(_dialect(db_url)))
    assert versions == [expected] * 8
    described, _ = build_and_describe(db_url)
    assert described == expected_file(_dialect(db_url)).read_text()


def _build_at_level(db_url: str, level: int, *, start: int = 1,
                    edit: Callable[[int, str], str] | None = None) -> None:
    """Apply migrations ``start`` to ``level`` to the database at ``db_url``, as the
    code of that level did (its ``schema_migrations`` rows included): from 1, the
    database is empty. ``edit`` gets each migration's version and script and
    returns the script to apply."""
    def scripts(dialect: str) -> list[tuple[int, str, str]]:
        return [(version, name, edit(version, script) if edit else script)
                for version, name, script in load_migrations(dialect)
                if start <= version <= level]

    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        if start == 1:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for version, name, script in scripts("sqlite"):
            conn.executescript(script)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
        conn.commit()
        conn.close()
        return
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    conninfo, options = parse_postgres_url(db_url)
    schema = options["schema"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if start == 1:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        if start == 1:
            conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                         " name text NOT NULL, applied_at double precision NOT NULL)")
        for version, name, script in scripts("postgres"):
            conn.execute(script)  # type: ignore[call-overload]
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, 0)", (version, name))


def _copy_data(source_url: str, target_url: str) -> None:
    """Copy every row of ``source_url`` into the older schema at ``target_url``:
    the columns that level has, as the code of that level wrote them."""
    if source_url.startswith("sqlite"):
        conn = sqlite3.connect(target_url.removeprefix("sqlite:///"))
        conn.execute("ATTACH DATABASE ? AS source", (source_url.removeprefix("sqlite:///"),))
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table'"
            " AND name NOT IN ('schema_migrations', 'sqlite_sequence')")]
        for table in tables:
            columns = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({columns})"
                         f" SELECT {columns} FROM source.{table}")
        conn.commit()
        conn.close()
        return
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    conninfo, options = parse_postgres_url(target_url)
    source, target = parse_postgres_url(source_url)[1]["schema"], options["schema"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Tables come in no particular order: foreign keys are not checked while
        # copying (rows of the timeline may come before their runs).
        conn.execute("SET session_replication_role = replica")
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name <> 'schema_migrations'", (target,))]
        for table in tables:
            columns = ", ".join(r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s", (target, table)))
            conn.execute(f'INSERT INTO "{target}".{table} ({columns})'  # type: ignore[arg-type]
                         f' SELECT {columns} FROM "{source}".{table}')
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND is_identity = 'YES'", (target,)).fetchall():
            conn.execute(  # type: ignore[call-overload]
                f"SELECT setval(pg_get_serial_sequence('\"{target}\".{table}', '{column}'),"
                f' (SELECT COALESCE(MAX({column}), 0) + 1 FROM "{target}".{table}), false)')


@pytest.fixture
def source_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the store of ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/source.db"
        return
    import psycopg

    from stackshift.store.postgres import parse_postgres_url

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo, _ = parse_postgres_url(db_url)
    yield f"{db_url.split('?')[0]}?schema={schema}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


LEVELS = [version for version, _, _ in load_migrations("sqlite")][:-1]


def _app_on(url: str, clock: FakeClock, order: list[str]) -> StackShift:
    """``urgent`` sleeps a minute, then notes its turn; ``routine`` notes it at once."""
    app = StackShift(url, clock=clock)

    @app.job("urgent")
    def urgent(ctx: Any) -> str:
        ctx.step.sleep("nap", "60s")
        order.append("urgent")
        return "urgent done"

    @app.job("routine")
    def routine(ctx: Any) -> str:
        order.append("routine")
        return "routine done"

    return app


def _sleeping_urgent_run(source_url: str, clock: FakeClock) -> tuple[str, str]:
    """At ``source_url``: a completed routine run and an urgent run (priority 10)
    sleeping for a minute. Returns their ids."""
    before = _app_on(source_url, clock, [])
    try:
        done = before.start("routine", {"n": 1}).id
        sleeping = before.start("urgent", priority=10).id
        run_until_idle(before)
        assert before.runs.get(sleeping).status == "waiting"
        return done, sleeping
    finally:
        before.close()


def _urgent_goes_first(db_url: str, clock: FakeClock, done: str, sleeping: str) -> None:
    """Open ``db_url`` (which migrates it): while the urgent run sleeps two routine
    runs are started; once all three are ready, one worker slot runs the urgent
    one first."""
    order: list[str] = []
    after = _app_on(db_url, clock, order)
    try:
        assert after._service.schema_version() == len(load_migrations(_dialect(db_url)))
        assert after.runs.get(done).result == "routine done"
        clock.advance(30)
        later = [after.start("routine", {"n": n}).id for n in (2, 3)]
        clock.advance(31)  # the sleep is over: all three are ready
        run_until_idle(after, concurrency=1)
        assert order == ["urgent", "routine", "routine"]
        for run_id in [sleeping, *later]:
            assert after.runs.get(run_id).status == "completed"
    finally:
        after.close()


@pytest.mark.parametrize("level", LEVELS)
def test_a_database_of_each_older_level_upgrades_with_its_runs_intact(
        db_url: str, source_url: str, level: int) -> None:
    """Runs in flight when the code of an older level stopped carry on after the
    upgrade: finished runs keep their results, and a sleeping run of priority 10
    still goes before runs of priority 0 that became ready before it woke."""
    clock = FakeClock("2026-01-05T09:00:00Z")
    done, sleeping = _sleeping_urgent_run(source_url, clock)
    _build_at_level(db_url, level)
    _copy_data(source_url, db_url)
    _urgent_goes_first(db_url, clock, done, sleeping)


FIXED_0003 = "WHERE status IN ('queued', 'scheduled', 'retrying', 'running', 'waiting')"


def _old_0003(version: int, script: str) -> str:
    """Migration 0003 as it was first released: it set the claim priority of
    ready runs only."""
    if version != 3:
        return script
    assert FIXED_0003 in script
    return script.replace(FIXED_0003, "WHERE status IN ('queued', 'scheduled', 'retrying')")


def test_a_database_upgraded_by_the_first_0003_gets_its_priorities_back(
        db_url: str, source_url: str) -> None:
    """A database of schema 2 upgraded to 6 by the first release of 0003 left a
    sleeping run of priority 10 at claim priority 0; the upgrade after 6 puts it
    back before the runs of priority 0."""
    clock = FakeClock("2026-01-05T09:00:00Z")
    done, sleeping = _sleeping_urgent_run(source_url, clock)
    _build_at_level(db_url, 2)
    _copy_data(source_url, db_url)
    _build_at_level(db_url, 6, start=3, edit=_old_0003)
    _urgent_goes_first(db_url, clock, done, sleeping)


def test_runs_that_waited_before_0008_are_found_by_their_correlation_key(
        db_url: str, source_url: str) -> None:
    """0008 fills run_correlations from the waits and the taken events of the
    runs already there."""
    clock = FakeClock("2026-01-05T09:00:00Z")
    with StackShift(source_url, clock=clock) as before:
        @before.job("waiter")
        def waiter(ctx: Any) -> str:
            return ctx.step.wait_for_event("paid", correlation_key=ctx.payload["key"]).id

        took = before.start("waiter", {"key": "order:1"})
        waits = before.start("waiter", {"key": "order:2"})
        run_until_idle(before)
        before.events.send("paid", {}, correlation_key="order:1")
        run_until_idle(before)
        assert before.runs.get(took.id).status == "completed"
    _build_at_level(db_url, 7)
    _copy_data(source_url, db_url)
    with StackShift(db_url, clock=clock) as after:
        assert after._service.schema_version() == len(load_migrations(_dialect(db_url)))
        assert [r.id for r in after.runs.list(correlation_key="order:1")] == [took.id]
        assert [r.id for r in after.runs.list(correlation_key="order:2")] == [waits.id]


def _write_expected_files() -> None:
    import tempfile

    import psycopg

    with tempfile.TemporaryDirectory() as tmp:
        text, _ = build_and_describe(f"sqlite:///{tmp}/schema.db")
        expected_file("sqlite").write_text(text)
    sys.path.insert(0, str(HERE.parent))
    from conftest import POSTGRES_URL

    schema = f"schema_{uuid.uuid4().hex[:8]}"
    try:
        text, _ = build_and_describe(f"{POSTGRES_URL}?schema={schema}")
        expected_file("postgres").write_text(text)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    _write_expected_files()
    print("wrote", expected_file("sqlite"), "and", expected_file("postgres"))
