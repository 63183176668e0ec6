"""libpq's own parameters in a StackShift PostgreSQL URL reach the server as written."""

from __future__ import annotations

from stackshift import StackShift


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
