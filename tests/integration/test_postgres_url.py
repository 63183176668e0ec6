"""libpq's own parameters in a StackShift PostgreSQL URL reach the server as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from stackshift import StackShift, ValidationError


def test_a_space_in_a_libpq_option_stays_a_space(pg_url: str) -> None:
    # "-c statement_timeout=4321": the space is written %20 in the URL; were it
    # passed on as "+", the server would refuse the connection.
    app = StackShift(f"{pg_url}&options=-c%20statement_timeout%3D4321"
                     "&application_name=stackshift%20url%20test")
    try:
        with app._service.store.db.read() as tx:
            found = tx.raw("SELECT current_setting('statement_timeout') AS timeout,"
                           " current_setting('application_name') AS name", {})[0]
        assert found["timeout"] == "4321ms"
        assert found["name"] == "stackshift url test"
    finally:
        app.close()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_pool_timeout_that_is_no_positive_number_is_refused(pg_url: str, value: str) -> None:
    # Refused when the client is built, naming the option, before anything is
    # written: no schema is created.
    with pytest.raises(ValidationError, match=f"pool_timeout must be a positive number of "
                                              f"seconds, got '{value}'"):
        StackShift(f"{pg_url}&pool_timeout={value}")
    schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
    with psycopg.connect(pg_url.split("?")[0]) as admin:
        found = admin.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                              (schema,)).fetchall()
    assert found == []
    # A positive number of seconds is taken.
    app = StackShift(f"{pg_url}&pool_timeout=2.5")
    try:
        assert app.start("job", {}).status == "queued"
    finally:
        app.close()


@pytest.mark.parametrize(("option", "said"), [
    ("schema=", "schema must be letters, digits and underscores (at most 63), got ''"),
    ("pool_min=20&pool_size=5", "pool_min (20) must not be more than pool_size (5)"),
])
def test_an_empty_schema_or_a_pool_min_over_the_pool_size_is_refused(
        pg_url: str, option: str, said: str) -> None:
    """An empty schema (``?schema=$SCHEMA``, the variable unset) would put the
    tables in the role's default schema, beside other installations'."""
    schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
    with pytest.raises(ValidationError) as refused:
        StackShift(f"{pg_url}&{option}")
    assert str(refused.value) == said
    with psycopg.connect(pg_url.split("?")[0]) as admin:
        found = admin.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                              (schema,)).fetchall()
    assert found == []


_WITHOUT_PSYCOPG = '''
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_pool"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


def test_without_the_driver_a_postgres_url_says_which_extra_to_install(
    pg_url: str, tmp_path: Path
) -> None:
    # psycopg comes with the 'postgres' extra; an installation without it gets
    # that instruction, not a bare "No module named 'psycopg'". SQLite needs no
    # driver and still works there.
    (tmp_path / "sitecustomize.py").write_text(_WITHOUT_PSYCOPG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])

    def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stackshift.cli", *args, "--database-url",
                               url], capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)

    refused = cli(pg_url, "runs", "list", "--json")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert ("a PostgreSQL URL needs the driver: pip install 'stackshift[postgres]'"
            in refused.stderr)
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    assert cli(plain, "migrate").returncode == 0
    on_sqlite = cli(plain, "runs", "list", "--json")
    assert on_sqlite.returncode == 0, on_sqlite.stderr
    assert json.loads(on_sqlite.stdout)["items"] == []
