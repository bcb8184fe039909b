"""Connecting to job state's Redis, whichever its topology (see :mod:`batchflow.redisurl`): one
server, a master found through Sentinel, or a Cluster. What differs between them stops here: the
store gets a client with redis-py's one interface, the kind, and :data:`DOWN`.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.cluster
import redis.exceptions
import redis.sentinel

from .redisurl import CLUSTER, SENTINEL, RedisAddress, parse_redis_url

#: What "Redis does not answer" is made of, for every topology: a lost connection or a timeout;
#: on a Cluster, a slot without a master for now (a failover) or a key moving (resharding) after
#: redis-py's own retries; through Sentinel, a master demoted under the client (READONLY) until
#: the new one is found. Callers turn these into :class:`~batchflow.exceptions.Unavailable`.
DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.RedisClusterException,
)

#: Connections one pool may open when the URL does not say (``?max_connections=N``).
MAX_CONNECTIONS = 64


def connect(url: str, timeout: float) -> tuple[redis.Redis, str]:
    """A client for ``url`` (decoding replies to str) and the topology's kind.

    :param timeout: seconds a connection or command may take (``BATCHFLOW_REDIS_TIMEOUT``).
    :raises ValueError: what redis-py refuses in a one-server URL.
    """
    address = parse_redis_url(url)
    if address.kind == SENTINEL:
        return _sentinel(address, timeout), SENTINEL
    if address.kind == CLUSTER:
        return _cluster(address, timeout), CLUSTER
    # A blocking pool: a burst of requests waits (up to 10 s) for a free connection rather than
    # failing when all are busy.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=10,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=15,
    )
    return redis.Redis(connection_pool=pool), address.kind


def _common(address: RedisAddress, timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "username": address.username,
        "password": address.password,
        "max_connections": address.max_connections or MAX_CONNECTIONS,
    }
    if address.tls:
        options["ssl"] = True
    return options


def _sentinel(address: RedisAddress, timeout: float) -> redis.Redis:
    sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(address.nodes),
        sentinel_kwargs={
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "password": address.sentinel_password,
        },
    )
    options = _common(address, timeout)
    options["health_check_interval"] = 15
    return cast(redis.Redis, sentinels.master_for(address.master, db=address.db, **options))  # type: ignore[no-untyped-call]


def _cluster(address: RedisAddress, timeout: float) -> redis.Redis:
    node = cast(Any, redis.cluster.ClusterNode)
    nodes = [node(host, port) for host, port in address.nodes]
    client = redis.cluster.RedisCluster(startup_nodes=nodes, **_common(address, timeout))
    # RedisCluster speaks redis.Redis's commands; the store only uses those it shares.
    return cast(redis.Redis, client)


def wait_for_replicas(client: redis.Redis, key: str, replicas: int, timeout_ms: int) -> bool:
    """Whether ``replicas`` replicas of the server holding ``key`` acknowledged all its writes
    within ``timeout_ms`` (WAIT)."""
    command: Any = client.execute_command
    if isinstance(client, redis.cluster.RedisCluster):  # WAIT names no key: ask the key's node
        node = client.get_node_from_key(key)
        return int(command("WAIT", replicas, timeout_ms, target_nodes=node)) >= replicas
    return int(command("WAIT", replicas, timeout_ms)) >= replicas
