"""Fixtures: a real collab server per test, real clients, real services."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pytest
from harness import Harness, YjsPeer, cancel_leftover_tasks, make_settings

from collab.server import Server


@pytest.fixture
def settings():
    """Settings for the ``server`` fixture; tests may change fields before using it."""
    return make_settings()


def running_server(io_loop, settings):
    """Yield a :class:`Harness` around a server started on ``io_loop``; stop it after."""
    srv = io_loop.run_sync(lambda: Server.start(settings))
    harness = Harness(srv)
    yield harness
    io_loop.run_sync(harness.close_clients)
    io_loop.run_sync(srv.stop)
    io_loop.run_sync(cancel_leftover_tasks)


@pytest.fixture
def server(io_loop, settings):
    yield from running_server(io_loop, settings)


@pytest.fixture(scope="module")
def yjs() -> Iterator[YjsPeer]:
    """Real yjs and y-protocols in one Node process, shared by a test module."""
    peer = YjsPeer()
    yield peer
    peer.close()


# -- real backing services (tests/services.py) --------------------------------
# One of each per test session; tests isolate themselves by database name (Mongo)
# or by key prefix / database number / unique names (Redis). Tests that stop a server
# to simulate an outage start their own MongoServer / RedisServer /
# RedisClusterServer instead.

from services import start_mongo, start_redis, start_redis_cluster, with_database  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mongo: runs against a MongoDB wire server")
    config.addinivalue_line(
        "markers", "cluster: several collab processes sharing redis-server and MongoDB"
    )


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory):
    """``mongodb://127.0.0.1:PORT`` without a database (or COLLAB_TEST_MONGODB_URL)."""
    url, stop = start_mongo(tmp_path_factory.mktemp("mongo"))
    yield url
    stop()


@pytest.fixture
def mongo_db(mongodb_url: str) -> Iterator[str]:
    """A database of its own on the session's Mongo server, dropped afterwards."""
    name = "e2e_" + uuid.uuid4().hex[:12]
    url = with_database(mongodb_url, name)
    yield url
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client:
        client.drop_database(name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """``redis://127.0.0.1:PORT/0`` of a private redis-server (or COLLAB_TEST_REDIS_URL)."""
    url, stop = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory):
    """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`` of a private 3-master
    Redis Cluster (or COLLAB_TEST_REDIS_CLUSTER_URL); starting it takes about 2-3 s."""
    url, stop = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield url
    stop()
