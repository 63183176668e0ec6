"""PostgreSQL: a psycopg 3 connection pool, one schema, LISTEN/NOTIFY wake-ups.

Write transactions run at READ COMMITTED. The shared store is written so that
every step that races with another process is a single conditional statement
(``UPDATE ... WHERE status = :from`` / lease owner), an ``ON CONFLICT`` upsert, a
row lock taken by a ``FOR NO KEY UPDATE`` query in ``sql/postgres.sql``, or
guarded by :meth:`_PostgresTx.lock`, a transaction-scoped advisory lock.

URL options (removed before the URL reaches libpq): ``schema`` (created by
``migrate`` when missing, and the only schema on every connection's
``search_path``), ``pool_size`` (most connections, default 10), ``pool_min``
(connections kept open, default 1) and ``pool_timeout`` (seconds to wait for a
free connection, default 30).

Connections that die (a server restart, a dropped network link) are found out
by the ``BEGIN`` that starts every transaction (or, for a transaction of one
statement sent without BEGIN, by a probe of a connection the server wrote to
while it sat idle): the transaction moves to another connection and the pool
reconnects in the background with backoff. A transaction that was already
under way when its connection died raises; the callers (worker loops,
clients) retry or report it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import select
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ExecStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from .. import forks
from ..errors import ValidationError
from .database import LEAD_SILENCE, Row
from .queries import load_migrations, load_queries

log = logging.getLogger("stackshift.store")

#: The channel every StackShift schema notifies on; the payload names the schema.
CHANNEL = "stackshift"

_OPTIONS = ("schema", "pool_size", "pool_min", "pool_timeout")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Quoted text first, so that a ':name' or '%' inside a literal is left alone.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::|:([A-Za-z_]\w*)|%")
#: Seconds the pool retries a connection it cannot make before giving up on it
#: (a request that waits for one starts a new try).
RECONNECT_SECONDS = 5.0
#: Connection settings applied unless the URL chooses its own.
_CONNECT_DEFAULTS = {
    "application_name": "stackshift",
    "connect_timeout": "10",
    # Find a dead peer within about a minute, even on an idle connection; the
    # leader's connection depends on it to stop leading on a lost link (the
    # server, for its part, ends a silent leader's session: see try_lead).
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

PgConnection = psycopg.Connection[DictRow]
PgCursor = psycopg.Cursor[DictRow]


def to_psycopg(text: str) -> str:
    """Rewrite ``:name`` placeholders to psycopg's ``%(name)s``.

    ``::type`` casts and quoted text are kept; a literal ``%`` becomes ``%%``.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if match.group(1):
            return f"%({match.group(1)})s"
        if token == "%":
            return "%%"
        return token.replace("%", "%%")

    return _TOKEN.sub(replace, text)


_converted = lru_cache(maxsize=512)(to_psycopg)


def lock_id(key: str) -> int:
    """A stable signed 64-bit advisory-lock id for ``key`` (any text, NUL included)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big",
                          signed=True)


def parse_postgres_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``url`` into the URL for libpq and StackShift's own options."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValidationError(f"not a PostgreSQL URL: {url!r}")
    kept: list[tuple[str, str]] = []
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            options[key] = value
        else:
            kept.append((key, value))
    # quote, not quote_plus: libpq reads a "+" in a URL as a plus sign, not a space.
    conninfo = urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote)))
    return conninfo, options


def _positive_seconds(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValidationError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _positive_int(options: Mapping[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValidationError(f"{name} must be at least 1, got {value}")
    return value


def _raise_refused_value(exc: BaseException) -> None:
    """A text value with NUL, which psycopg refuses before it reaches the server
    (or the server, inside a JSON parameter): raise it as the caller's bad input."""
    if isinstance(exc, psycopg.DataError) and (
            "NUL" in str(exc)  # a parameter's text
            or "\\u0000" in (exc.diag.message_detail or "")):  # a JSON parameter's
        raise ValidationError("text values cannot contain the NUL character (U+0000)") from exc


def _returned_rows(cur: PgCursor) -> bool:
    """Whether the statement returned rows (even none): what ``cur.description is
    not None`` says, without building a column description (some 70 µs for a
    row of runs)."""
    return cur.pgresult is not None and cur.pgresult.status == ExecStatus.TUPLES_OK


class _PostgresTx:
    dialect = "postgres"

    def __init__(self, conn: PgConnection, queries: dict[str, str],
                 one_statement: bool = False) -> None:
        self._conn = conn
        self._queries = queries  # shared by the database's transactions
        self._one_statement = one_statement
        self._execute = self._only_statement if one_statement else conn.execute
        self._sent = False

    def _only_statement(self, text: str, params: Any = None) -> PgCursor:
        """``write_one``'s execute: the connection is in autocommit, so a second
        statement would be a transaction of its own."""
        self._check_one()
        return self._conn.execute(text, params)

    def _check_one(self) -> None:
        if self._sent:
            raise RuntimeError("write_one() takes one statement: use write()")
        self._sent = True

    def one(self, query: str, **params: Any) -> Row | None:
        cur = self._execute(self._queries[query], params)
        return cur.fetchone() if _returned_rows(cur) else None

    def all(self, query: str, **params: Any) -> list[Row]:
        return self._rows(self._queries[query], params)

    def _rows(self, text: str, params: Mapping[str, Any]) -> list[Row]:
        cur = self._execute(text, params)
        return list(cur.fetchall()) if _returned_rows(cur) else []

    def all_limited(self, query: str, limit: int, **params: Any) -> list[Row]:
        # A generic plan (planned once per statement) must guess a parameter
        # limit at a tenth of the rows, which makes it look dear enough that
        # PostgreSQL plans the statement again at every call instead.
        key = f"{query}@{int(limit)}"
        text = self._queries.get(key)
        if text is None:
            text = self._queries[key] = self._queries[query].replace("%(limit)s", str(int(limit)))
        return self._rows(text, params)

    def run(self, query: str, **params: Any) -> int:
        return self._execute(self._queries[query], params).rowcount

    def many(self, query: str, params: Sequence[Mapping[str, Any]]) -> None:
        if self._one_statement:
            self._check_one()  # and then the batch's second statement
        # psycopg sends the whole batch in pipeline mode: one round trip, not one per row.
        with self._conn.cursor() as cur:
            cur.executemany(self._queries[query], params)

    def many_returning(self, query: str, params: Sequence[Mapping[str, Any]]
                       ) -> list[Row | None]:
        # Pipelined like many(); each statement's result set is read in turn.
        found: list[Row | None] = []
        if not params:
            return found
        if self._one_statement:
            self._check_one()
        with self._conn.cursor() as cur:
            cur.executemany(self._queries[query], params, returning=True)
            while True:
                found.append(cur.fetchone())
                if not cur.nextset():
                    break
        return found

    def raw(self, sql_text: str, params: Mapping[str, Any]) -> list[Row]:
        return self._rows(_converted(sql_text), params)

    def lock(self, key: str) -> None:
        # Hashed here rather than with hashtext(): keys may hold NUL, which
        # PostgreSQL text cannot, and a 64-bit id makes collisions negligible.
        self._execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(key),))

    def is_data_error(self, exc: BaseException) -> bool:
        # Class 22: invalid text representation, numeric value out of range, ...
        return isinstance(exc, psycopg.errors.DataError)

    def link_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and self._conn.broken


class PostgresDatabase:
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        conninfo, options = parse_postgres_url(url)
        # An empty schema= (often "?schema=$SCHEMA" with the variable unset) is
        # refused, not read as the role's default schema, where it would mix
        # installations meant to be apart.
        self.schema = options.get("schema")
        if self.schema is not None and not _SCHEMA_NAME.fullmatch(self.schema):
            raise ValidationError(
                f"schema must be letters, digits and underscores (at most 63), got {self.schema!r}"
            )
        max_size = _positive_int(options, "pool_size", 10)
        min_size = _positive_int(options, "pool_min", 1)
        if "pool_min" in options and min_size > max_size:
            raise ValidationError(f"pool_min ({min_size}) must not be more than pool_size"
                                  f" ({max_size})")
        min_size = min(min_size, max_size)
        self._timeout = _positive_seconds(options, "pool_timeout", 30.0)
        params = conninfo_to_dict(conninfo)
        for key, value in _CONNECT_DEFAULTS.items():
            params.setdefault(key, value)
        if self.schema is not None:
            search_path = f'-c search_path="{self.schema}"'
            params["options"] = f"{params.get('options') or ''} {search_path}".strip()
        self._conninfo = make_conninfo("", **params)
        self._queries = load_queries("postgres", to_psycopg)
        self._min_size, self._max_size = min_size, max_size
        self._closed = False
        self._start_over()
        forks.register(self)

    def _start_over(self) -> None:
        """No connections yet (the pool opens on first use), no lock held."""
        self._pool: ConnectionPool[PgConnection] = ConnectionPool(
            self._conninfo,
            connection_class=PgConnection,
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            # A connection that cannot be made is retried with a doubling delay;
            # the pool gives up on it after this long, and the next request that
            # waits starts again at one second. So once the server is back, the
            # pool is too within seconds, however long the outage (without it,
            # the delay grows past a minute).
            reconnect_timeout=RECONNECT_SECONDS,
            reconnect_failed=self._reconnect_again,
            name="stackshift",
            open=False,
        )
        self._reached = False
        # LISTEN connection (wake-ups) and leader connection (maintenance
        # election): dedicated, outside the pool, opened on first use.
        self._listen_lock = threading.Lock()
        self._listener: PgConnection | None = None
        self._listen_payload: bytes | None = None
        self._listen_retry_at = 0.0
        self._listen_backoff = 0.0
        self._lead_lock = threading.Lock()
        self._leader: PgConnection | None = None
        self._leader_owner: str | None = None
        self._leader_silence: float | None = None
        self._lead_retry_at = 0.0

    #: Seconds after the pool gives up making a connection before it starts again.
    RECONNECT_PAUSE = 1.0

    def _reconnect_again(self, pool: ConnectionPool[PgConnection]) -> None:
        """The pool gave up making a connection (the server away for
        ``RECONNECT_SECONDS``): it starts again a moment later, and so on while the
        server is away. A request made later would start it too, but the requests
        already waiting (a worker's checkpoint, its lease renewal, its claim) would
        otherwise get no connection until they time out, however soon the server
        is back."""
        if self._closed or pool is not self._pool:
            return
        again = threading.Timer(self.RECONNECT_PAUSE, self._check_pool, args=(pool,))
        again.daemon = True
        again.start()

    def _check_pool(self, pool: ConnectionPool[PgConnection]) -> None:
        if self._closed or pool is not self._pool:
            return
        try:
            pool.check()  # grows the pool again if it holds no connection
        except Exception:  # closed meanwhile, or the server still away: tried again
            log.debug("checking the connection pool failed", exc_info=True)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stackshift.forks`): leave the parent's
        connections to it, unclosed (a close would end its sessions), and
        start over. The parent keeps leading maintenance, if it did."""
        forks.keep(self._pool, self._listener, self._leader)
        self._start_over()

    # -- connections -------------------------------------------------------------

    def _connect(self) -> PgConnection:
        return psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)

    def _getconn(self) -> PgConnection:
        """A pooled connection. Before the first one, a direct connection attempt, so
        that a wrong URL or password fails at once with the server's own message
        instead of after ``pool_timeout`` with a bare timeout."""
        if not self._reached:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._connect().close()
            self._pool.open()  # (a no-op on an open pool)
            self._reached = True
        return self._pool.getconn()

    def _begin(self, command: str | None) -> PgConnection:
        """A pooled connection inside a new transaction (``command`` starts it).

        A connection that died while idle in the pool (server restart, network
        cut) fails here before any work was sent, so the transaction simply
        moves to another connection; the pool replaces the dead ones.

        Without a ``command`` (a statement that is its own transaction comes
        next), a connection the server has written to while it sat idle (its
        goodbye when it shut the session down) is probed with ``SELECT 1``
        first, so that a server restart is found out here too and not by the
        statement, whose fate would then be unknown.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        began = time.monotonic()
        deadline = began + self._timeout
        pause = 0.05
        checked = False
        while True:
            conn = self._getconn()
            try:
                if command is not None:
                    conn.execute(command)
                elif select.select([conn.pgconn.socket], [], [], 0)[0]:
                    conn.execute("SELECT 1")
                return conn
            except psycopg.OperationalError:
                self._pool.putconn(conn)  # broken: the pool discards it
                failed = time.monotonic()
                if failed >= deadline:
                    raise
            if not checked:
                checked = True
                if failed - began < 0.1:
                    # The first connection ended at once (not a network gone
                    # quiet, where a check of each would wait as long): the idle
                    # ones beside it most likely ended with it (the server
                    # restarted, idle sessions were ended). They are found out
                    # and replaced now, in one pass, rather than by one failed
                    # BEGIN and a pause each.
                    self._check_pool(self._pool)
                    continue
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    @contextmanager
    def _transaction(self, command: str) -> Iterator[_PostgresTx]:
        conn = self._begin(command)
        try:
            try:
                yield _PostgresTx(conn, self._queries)
            except BaseException as exc:
                if not conn.closed:
                    # A failure here leaves a broken connection the pool discards.
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                _raise_refused_value(exc)
                raise
            conn.execute("COMMIT")
        finally:
            self._pool.putconn(conn)

    @contextmanager
    def write_one(self) -> Iterator[_PostgresTx]:
        """See :meth:`Database.write_one`. The statement is committed when it
        returns: code after it in the block must not fail."""
        conn = self._begin(None)
        try:
            yield _PostgresTx(conn, self._queries, one_statement=True)
        except BaseException as exc:
            _raise_refused_value(exc)
            raise
        finally:
            self._pool.putconn(conn)

    def write(self, durable: bool = True) -> AbstractContextManager[_PostgresTx]:
        """A READ COMMITTED read-write transaction; see the module notes on races.

        ``durable=False``: ``synchronous_commit = off`` for this transaction only.
        """
        if durable:
            return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED")
        return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED;"
                                 " SET LOCAL synchronous_commit = off")

    def read(self) -> AbstractContextManager[_PostgresTx]:
        """A consistent read-only snapshot (REPEATABLE READ never blocks or fails a reader)."""
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def autocommit_one(self, query: str, **params: Any) -> Row | None:
        """Run one named statement (one that returns rows) as a transaction of its
        own; return its first row, if any.

        One round trip: no BEGIN or COMMIT around it. Only for a statement that
        is a whole transaction by itself and harmless to apply twice: a
        connection that died while idle in the pool is found out by the
        statement itself, which then goes to another connection (the pool
        replaces the dead one); should the link fail just after the server's
        commit, the statement is applied twice.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        deadline = time.monotonic() + self._timeout
        pause = 0.05
        while True:
            conn = self._getconn()
            try:
                # A statement that returns rows: fetchone without asking for the
                # description first (building it costs more than the fetch).
                return conn.execute(self._queries[query], params).fetchone()
            except psycopg.OperationalError:
                if not conn.broken or time.monotonic() >= deadline:
                    raise
            except psycopg.DataError as exc:
                _raise_refused_value(exc)
                raise
            finally:
                self._pool.putconn(conn)  # a broken connection is discarded
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    # -- schema ------------------------------------------------------------------

    def migrate(self) -> int:
        """Create the schema if needed and apply pending migrations, each in a transaction.

        Processes starting together queue on an advisory lock for this schema,
        so each migration is applied once.
        """
        conn = self._getconn()
        try:
            key = lock_id("stackshift.migrate:" + (self.schema or ""))
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                if self.schema is not None:
                    conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self.schema)
                        )
                    )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at double precision NOT NULL)"
                )
                for version, name, script in load_migrations("postgres"):
                    with conn.transaction():
                        done = conn.execute(
                            "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                        ).fetchone()
                        if not done:
                            conn.execute(script)  # no parameters: sent as written
                            conn.execute(
                                "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                                (version, name, time.time()),
                            )
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            self._pool.putconn(conn)
        return self.schema_version()

    def schema_version(self) -> int:
        """The schema's version (0 without one). A pooled connection that died
        while idle (a restart, a failover) is found out by the query, which moves
        to another connection, as every transaction's ``BEGIN`` does: a health
        check asks this, and the database answers."""
        deadline = time.monotonic() + self._timeout
        while True:
            conn = self._getconn()
            try:
                row = conn.execute("SELECT MAX(version) AS v FROM schema_migrations").fetchone()
                return int(row["v"] or 0) if row else 0
            except psycopg.errors.UndefinedTable:
                return 0
            except psycopg.OperationalError:
                if not conn.broken or time.monotonic() >= deadline:
                    raise
            finally:
                self._pool.putconn(conn)  # a broken connection is discarded

    # -- change detection ----------------------------------------------------------

    def detached(self) -> str | None:
        """Never: a server's database is not a file under this process."""
        return None

    def changed(self) -> bool:
        """Whether a run became ready in this schema since the last call.

        Reads what has arrived on a dedicated LISTEN connection without
        waiting: one non-blocking socket read. When that connection is lost it
        is reopened with backoff; a fresh connection reports a change, since
        notifications sent while it was away are gone.
        """
        with self._listen_lock:
            if self._closed:
                return False
            conn = self._listener
            if conn is None:
                if time.monotonic() < self._listen_retry_at:
                    return False
                try:
                    self._listener = self._open_listener()
                except psycopg.OperationalError:
                    self._listen_backoff = min(max(self._listen_backoff * 2, 0.1), 5.0)
                    self._listen_retry_at = time.monotonic() + self._listen_backoff
                    return False
                self._listen_backoff = 0.0
                return True
            try:
                pgconn = conn.pgconn
                pgconn.consume_input()
                seen = False
                while (note := pgconn.notifies()) is not None:
                    seen = seen or note.extra == self._listen_payload
                return seen
            except psycopg.Error:
                conn.close()
                self._listener = None
                return True

    def _open_listener(self) -> PgConnection:
        conn = self._connect()
        try:
            row = conn.execute("SELECT current_schema() AS s").fetchone()
            schema = self.schema or (row["s"] if row else None) or "public"
            self._listen_payload = schema.encode()
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            conn.close()
            raise
        return conn

    # -- maintenance election --------------------------------------------------------

    def try_lead(self, owner: str, silence: float = LEAD_SILENCE) -> bool:
        """Whether ``owner`` is (now) the one process that runs maintenance.

        Leadership is a session advisory lock held on a dedicated connection:
        when the leading process dies, its connection closes and the server
        releases the lock, so the next caller anywhere takes over. A leader
        that stays alive but silent (a hung or stopped process, a frozen
        machine, a lost network) keeps its connection open: the server ends
        that session once it has been idle for ``silence`` seconds
        (``idle_session_timeout``, PostgreSQL 14 and later), which frees the
        lock too. A leader calls again every maintenance round, each call a
        statement on that connection. Within a process only one owner leads.
        """
        with self._lead_lock:
            if self._closed or self._leader_owner not in (None, owner):
                return False
            if time.monotonic() < self._lead_retry_at:
                return False
            try:
                if self._leader is None:
                    self._leader = self._connect()
                    self._leader_silence = None
                if silence != self._leader_silence:
                    if self._leader.info.server_version >= 140000:
                        self._leader.execute(
                            "SELECT set_config('idle_session_timeout', %s, false)",
                            (str(max(1, math.ceil(silence * 1000))),))
                    self._leader_silence = silence
                if self._leader_owner == owner:
                    # Still connected means still holding the lock.
                    self._leader.execute("SELECT 1")
                    return True
                key = lock_id("stackshift.maintenance:" + (self.schema or ""))
                row = self._leader.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                           (key,)).fetchone()
                if row is not None and row["ok"]:
                    self._leader_owner = owner
                    return True
                return False
            except psycopg.Error as exc:
                if self._leader_owner == owner:
                    log.warning("maintenance: %s lost the lead (%s); another worker can"
                                " take it over", owner, str(exc).strip() or type(exc).__name__)
                self._drop_leader()
                self._lead_retry_at = time.monotonic() + 1.0
                return False

    def resign(self, owner: str) -> None:
        """Give up leadership if ``owner`` holds it (closing the session frees the lock)."""
        with self._lead_lock:
            if self._leader_owner == owner:
                self._drop_leader()

    def _drop_leader(self) -> None:
        if self._leader is not None:
            self._leader.close()
        self._leader = None
        self._leader_owner = None

    def close(self) -> None:
        self._closed = True
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        with self._lead_lock:
            self._drop_leader()
        self._pool.close()
