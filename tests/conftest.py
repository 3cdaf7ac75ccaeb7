import logging

import pytest
from redis_support import RedisCluster, RedisServer

# Keep roomcast's logs visible in failure reports without flooding them.
logging.getLogger("roomcast").setLevel(logging.INFO)
logging.getLogger("roomcast.picows").setLevel(logging.WARNING)


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server on a free port, killed after the test."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A three-master Redis Cluster shared by a module's tests."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
