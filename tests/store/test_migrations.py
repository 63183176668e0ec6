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
from pathlib import Path

from stackshift.store import open_store
from stackshift.store.queries import load_migrations

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
