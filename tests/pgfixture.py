"""pytest fixtures for a private PostgreSQL cluster (testlab/postgres.py). Import them into a test module:

    from tests.pgfixture import pg_cluster, pg_url  # noqa: F401  (pytest finds fixtures by name)
"""

from __future__ import annotations

import itertools

import pytest

from testlab.postgres import PostgresCluster

_names = itertools.count(1)


@pytest.fixture(scope="module")
def pg_cluster():
    with PostgresCluster(lifetime=1200) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster):
    """A fresh database for one test."""
    name = f"reports{next(_names)}"
    url = pg_cluster.create_database(name)
    yield url
    if pg_cluster.ready():
        pg_cluster.drop_database(name)
