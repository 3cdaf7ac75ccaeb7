import gc
import logging

import pytest
from redis_support import RedisCluster, RedisServer
from roomcast.serving.runner import CPYTHON_GC_THRESHOLDS

# Keep roomcast's logs visible in failure reports without flooding them.
logging.getLogger("roomcast").setLevel(logging.INFO)
logging.getLogger("roomcast.picows").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def default_gc():
    """`helper.run` tunes the garbage collector for the process (`roomcast.runner.tune_gc`):
    each test starts from CPython's settings again."""
    yield
    if gc.get_freeze_count() or gc.get_threshold() != CPYTHON_GC_THRESHOLDS:
        gc.unfreeze()
        gc.set_threshold(*CPYTHON_GC_THRESHOLDS)


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
