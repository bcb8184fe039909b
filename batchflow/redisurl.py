"""Where job state lives: ``BATCHFLOW_REDIS_URL`` read into a :class:`RedisAddress`.

Three topologies, told apart by the URL's scheme:

- one server: ``redis://``, ``rediss://`` (TLS), ``unix://``, as redis-py reads them;
- Sentinel: ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master>[/<db>]``
  (``rediss+sentinel://`` for TLS to the master and replicas; ``?sentinel_password=`` when the
  sentinels ask for one; a sentinel's port defaults to 26379);
- Cluster: ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]`` (``rediss+cluster``
  for TLS; any of the nodes, the rest are discovered; there is no database number).

``?max_connections=N`` sizes the connection pool (per node on a Cluster). This module only
parses and checks; :mod:`batchflow.redisconn` connects.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable

from .exceptions import ConfigurationError

Refuse = Callable[[str], ConfigurationError]

SERVER, SENTINEL, CLUSTER = "server", "sentinel", "cluster"
#: What redis-py connects to directly: the schemes it knows.
SERVER_SCHEMES = ("redis", "rediss", "unix")
#: Every scheme BATCHFLOW_REDIS_URL takes.
REDIS_SCHEMES = (
    *SERVER_SCHEMES,
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
REDIS_URL_FORMS = (
    "redis://host:port/db (for example redis://127.0.0.1:6379/0), "
    "rediss://host:port/db (TLS), unix:///path/to/redis.sock?db=0, "
    "redis+sentinel://host:26379,host:26379/mymaster/0 (Sentinel), or "
    "redis+cluster://host:7000,host:7001 (Cluster)"
)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@/]*@")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")


def has_scheme(url: str) -> bool:
    """Whether ``url`` starts with a scheme and ``://``."""
    return bool(_SCHEME_RE.match(url))


def shown_url(url: str) -> str:
    """``url`` for an error message or a log: its password replaced by ``***``."""
    return _PASSWORD_RE.sub(r"\1***@", url)


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """A checked ``BATCHFLOW_REDIS_URL``.

    ``kind`` is :data:`SERVER`, :data:`SENTINEL` or :data:`CLUSTER`. For one server only ``url``
    matters (redis-py reads it); for the others, ``nodes`` are the sentinels or the cluster's
    seed nodes, ``master`` the name Sentinel knows the master by, ``db`` its database number.
    """

    url: str
    kind: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_password: str | None = None
    max_connections: int | None = None


def parse_redis_url(url: str, key: str = "BATCHFLOW_REDIS_URL") -> RedisAddress:
    """``url`` read into a :class:`RedisAddress`, else a ConfigurationError naming ``key`` and
    showing the expected forms (``localhost:6379`` is the usual mistake: it has no scheme)."""
    hint = f"{key} must be a Redis URL: {REDIS_URL_FORMS}; not {shown_url(url)!r}."

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(f"{hint} ({why})")

    if not has_scheme(url):
        raise refuse(f"It has no scheme: did you mean {shown_url('redis://' + url)!r}?")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise refuse(f"{scheme}:// is not a Redis scheme.")
    if scheme in SERVER_SCHEMES:
        _check_server(url, scheme, refuse)
        return RedisAddress(url=url, kind=SERVER)
    tls, kind = scheme.startswith("rediss"), scheme.split("+", 1)[1]
    parsed = urllib.parse.urlsplit("x://" + rest)
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    query = urllib.parse.parse_qs(parsed.query)
    nodes = tuple(_node(h, 26379 if kind == SENTINEL else 6379, refuse) for h in hosts.split(","))
    path = [p for p in parsed.path.split("/") if p]
    master, db = "", 0
    if kind == SENTINEL:
        if not path or len(path) > 2:
            raise refuse("A Sentinel URL names the master after the hosts: .../mymaster/0.")
        master = urllib.parse.unquote(path[0])
        db = _db(path[1] if len(path) > 1 else "0", refuse)
    elif path and path != ["0"]:
        raise refuse("A Cluster has only database 0: leave the path empty.")
    return RedisAddress(
        url=url,
        kind=kind,
        nodes=nodes,
        master=master,
        db=db,
        username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None,
        tls=tls,
        sentinel_password=next(iter(query.get("sentinel_password", [])), None),
        max_connections=_max_connections(query, refuse),
    )


def _check_server(url: str, scheme: str, refuse: Refuse) -> None:
    parsed = urllib.parse.urlsplit(url)
    if scheme == "unix":
        if not parsed.path:
            raise refuse("A unix:// URL needs the socket's path.")
        return
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise refuse("The port must be a number from 0 to 65535.") from None
    _db(parsed.path.strip("/") or "0", refuse)


def _node(text: str, default_port: int, refuse: Refuse) -> tuple[str, int]:
    match = _HOST_RE.match(text.strip())
    if not match:
        raise refuse(f"{text!r} is not host or host:port.")
    port = int(match.group(2) or default_port)
    if not 0 < port < 65536:
        raise refuse("The port must be a number from 1 to 65535.")
    return match.group(1).strip("[]"), port


def _db(text: str, refuse: Refuse) -> int:
    if not text.isdigit():
        raise refuse("The database after the / must be a number.")
    return int(text)


def _max_connections(query: dict[str, list[str]], refuse: Refuse) -> int | None:
    raw = next(iter(query.get("max_connections", [])), None)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise refuse("max_connections must be a whole number of at least 1.")
    return int(raw)
