"""The Redis helpers (`roomcast.broker.redis.helper`), under its
documented name `roomcast.redis`."""

from .broker.redis.helper import (
    DefaultRedisHelper,
    RedisClusterHelper,
    RedisHelper,
    RedisSentinelHelper,
    connection_from_url,
)

__all__ = [
    "DefaultRedisHelper",
    "RedisClusterHelper",
    "RedisHelper",
    "RedisSentinelHelper",
    "connection_from_url",
]
