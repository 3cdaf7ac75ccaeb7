"""The Redis broker, in modules by role.

- `broker`: `RedisBroker`, the lifecycle (start, supervise, reconnect, close) and publishing
- `session`: one set of live connections (subscriber reader, writers, PING barriers)
- `interest`: what to subscribe, coalesced flushes, confirmations, delayed unsubscribe
- `watchdog`: probes that catch a subscriber that silently stopped receiving
- `cluster`: CLUSTER SLOTS discovery and the slot map (sharded pub/sub)
- `sentinel`: the master of a Sentinel service, asked for at every session
- `wire`: RESP encoding of the commands the broker writes itself
- `replies`: reading replies; the only module that knows redis-py's private parser
- `retry`: the one retry policy of every reconnect loop
- `target`: where and how to connect
"""

from .broker import INTEREST, PATTERN, SUBSCRIBE_MODES, RedisBroker
from .retry import RECONNECT, RetryPolicy
from .target import RedisTarget
from .watchdog import PROBE_PREFIX

__all__ = [
    "INTEREST",
    "PATTERN",
    "PROBE_PREFIX",
    "RECONNECT",
    "SUBSCRIBE_MODES",
    "RedisBroker",
    "RedisTarget",
    "RetryPolicy",
]
