"""Whether the server's session-state tracking could prove a MySQL session untouched.

The MySQL reset (``COM_RESET_CONNECTION``) is a round trip on every release. A release could
skip it, as the Redis adapter skips its reset, if the server said whether the borrower changed
the session. MySQL and MariaDB can: with ``session_track_state_change=ON`` and the client's
``CLIENT_SESSION_TRACK`` capability, every reply carries ``SERVER_SESSION_STATE_CHANGED`` when
the statement changed the session. This probe asks, one fresh connection per statement, which
statements that leave something behind for the next borrower set that flag.

    python benchmarks/probes/mysql_state_tracking.py     # TIDEPOOL_BENCH_MYSQL_URL to change

On MariaDB 10.11 (session 11) the flag misses ``GET_LOCK()``, ``LOCK TABLES``, ``HANDLER ...
OPEN``, and user or session variables set by ``SELECT ... INTO``, ``DO``, ``SELECT @v :=``, or
inside a stored function: so it cannot prove a session untouched, and the reset stays on
every release (docs/benchmarks.md, "The session reset on PostgreSQL and MySQL").

Needs PyMySQL and a server where the user may create functions in the database.
"""

from __future__ import annotations

import os

import pymysql
from pymysql.constants import CLIENT

from tidepool.adapters.mysql import MySQLTarget

URL = os.environ.get("TIDEPOOL_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
STATE_CHANGED = 0x4000  # SERVER_SESSION_STATE_CHANGED in a reply's status flags

SETUP = (
    "CREATE TABLE IF NOT EXISTS tidepool_probe_t (id int PRIMARY KEY)",
    "DROP FUNCTION IF EXISTS tidepool_probe_uservar",
    "CREATE FUNCTION tidepool_probe_uservar() RETURNS int BEGIN SET @probe = 1; RETURN 1; END",
    "DROP FUNCTION IF EXISTS tidepool_probe_sysvar",
    "CREATE FUNCTION tidepool_probe_sysvar() RETURNS int "
    "BEGIN SET SESSION sql_mode = ''; RETURN 1; END",
    "DROP FUNCTION IF EXISTS tidepool_probe_lock",
    "CREATE FUNCTION tidepool_probe_lock() RETURNS int "
    "BEGIN RETURN GET_LOCK('tidepool_probe_2', 0); END",
    "DROP PROCEDURE IF EXISTS tidepool_probe_temp",
    "CREATE PROCEDURE tidepool_probe_temp() "
    "BEGIN CREATE TEMPORARY TABLE tidepool_tmp2 (a int); END",
)
TEARDOWN = (
    "DROP FUNCTION tidepool_probe_uservar",
    "DROP FUNCTION tidepool_probe_sysvar",
    "DROP FUNCTION tidepool_probe_lock",
    "DROP PROCEDURE tidepool_probe_temp",
    "DROP TABLE tidepool_probe_t",
)
# Each leaves state that a reset must undo before the next borrower.
STATEMENTS = (
    "SET @v = 1",
    "SET SESSION sql_mode = ''",
    "SET autocommit = 0",
    "CREATE TEMPORARY TABLE tidepool_tmp (a int)",
    "PREPARE s FROM 'SELECT 1'",
    "USE mysql",
    "CALL tidepool_probe_temp()",
    "SELECT GET_LOCK('tidepool_probe', 0)",
    "LOCK TABLES tidepool_probe_t READ",
    "HANDLER tidepool_probe_t OPEN",
    "SELECT 1 INTO @v",
    "DO @v := 3",
    "SELECT @v := 2",
    "SELECT tidepool_probe_uservar()",
    "SELECT tidepool_probe_sysvar()",
    "SELECT tidepool_probe_lock()",
)


def connect(target: MySQLTarget) -> pymysql.Connection:
    return pymysql.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password.value if target.password is not None else "",
        database=target.database,
        autocommit=True,
        client_flag=CLIENT.SESSION_TRACK,
    )


def flagged(target: MySQLTarget, statement: str) -> bool:
    """Whether ``statement``'s reply says the session changed, on a fresh connection."""
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION session_track_state_change = ON")
            # DO replies with OK, which clears the flag that the SET above raised (a result
            # set's closing packet repeats the previous statement's flags instead).
            cur.execute("DO 1")
            assert not conn.server_status & STATE_CHANGED
            cur.execute(statement)
            cur.fetchall()
            while cur.nextset():
                pass
        return bool(conn.server_status & STATE_CHANGED)
    finally:
        conn.close()


def main() -> None:
    target = MySQLTarget.from_url(URL)
    with connect(target) as conn, conn.cursor() as cur:
        for sql in SETUP:
            cur.execute(sql)
    try:
        with connect(target) as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            print(f"server {cur.fetchone()[0]}")
        for statement in STATEMENTS:
            verdict = "flagged" if flagged(target, statement) else "MISSED "
            print(f"{verdict}  {statement}")
    finally:
        with connect(target) as conn, conn.cursor() as cur:
            for sql in TEARDOWN:
                cur.execute(sql)


if __name__ == "__main__":
    main()
