"""A throwaway PostgreSQL database for the tests that need one: ``pg_url``, a session fixture.

Each test process (pytest-xdist runs three) creates a database of its own on 127.0.0.1:5432
(user postgres, trust auth, as .ci/run sets up) and drops it when the session ends. Import the
fixture into a test module: ``from tests.pg import pg_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=5"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL does not answer at {PG_HOST}:{PG_PORT} as user {PG_USER!r} with trust "
            f"auth ({error}). Start it: .ci/run installs and starts Debian's postgresql and sets "
            "trust auth for 127.0.0.1.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """An SQLAlchemy URL (psycopg 3) of a new, empty database, dropped after the session."""
    name = f"batchflow_test_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
