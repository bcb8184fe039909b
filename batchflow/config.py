"""Deployment settings: the ``BATCHFLOW_*`` keys, read from Flask config or the environment.

Each key is documented once, in the README's configuration table; :data:`DEFAULTS` is the source of
truth for names and default values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigurationError

DEFAULTS: dict[str, Any] = {
    "BATCHFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
    "BATCHFLOW_BROKER_URL": None,  # None: the same Redis as BATCHFLOW_REDIS_URL
    "BATCHFLOW_REDIS_TIMEOUT": 2.0,
    "BATCHFLOW_KEY_PREFIX": "batchflow",
    "BATCHFLOW_QUEUE": "batchflow",
    "BATCHFLOW_JOB_TTL": 24 * 3600,
    "BATCHFLOW_FILES_DIR": os.path.join(tempfile.gettempdir(), "batchflow-files"),
    "BATCHFLOW_STEP_TARGET": 1.0,
    "BATCHFLOW_BATCH_MIN": 1,
    # High enough for units of 20 µs (a row of a report) to fill a one-second step; low enough
    # that an item job's slice of ids (one LRANGE in CLAIM, ~20 ms and 2 MB for 50,000 uuids)
    # and a step's rows in a worker's memory stay small.
    "BATCHFLOW_BATCH_MAX": 50_000,
    "BATCHFLOW_BATCH_INITIAL": 10,
    "BATCHFLOW_LEASE_SECONDS": 30.0,
    "BATCHFLOW_QUEUE_TIMEOUT": 300.0,
    "BATCHFLOW_MAINTENANCE_INTERVAL": 1.0,
    "BATCHFLOW_WORKER_TTL": 2.0,
    "BATCHFLOW_MAX_ATTEMPTS": 3,
    "BATCHFLOW_MAX_IDS": 100_000,
    "BATCHFLOW_MAX_BODY": 16 * 1024 * 1024,
    "BATCHFLOW_UPLOAD_MAX_BYTES": 100 * 1024 * 1024,  # an import's upload, streamed to disk
    "BATCHFLOW_CONFIRM_TIMEOUT": 86400.0,  # seconds a preview waits for Confirm, then discarded
    "BATCHFLOW_PROGRESS_INTERVAL": 0.25,
    "BATCHFLOW_CHECKPOINT_INTERVAL": 0.1,
    "BATCHFLOW_MAX_ACTIVE_JOBS": 10,  # per owner; a handler's max_active_jobs overrides it
    "BATCHFLOW_STREAM_SECONDS": 300.0,
    "BATCHFLOW_STREAMS_PER_USER": 4,
    "BATCHFLOW_FORGET_ANON_AT_LOGIN": False,
    "BATCHFLOW_GC_FREEZE": True,  # gc.freeze() after each handler's first step in a process
    "BATCHFLOW_CONTENT_SECURITY_POLICY": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
    ),
}

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: What redis-py connects to: the schemes it knows, and the forms the error message shows.
REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_URL_FORMS = (
    "redis://host:port/db (for example redis://127.0.0.1:6379/0), "
    "rediss://host:port/db (TLS), or unix:///path/to/redis.sock?db=0"
)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@/]*@")


def shown_url(url: str) -> str:
    """``url`` for an error message or a log: its password replaced by ``***``."""
    return _PASSWORD_RE.sub(r"\1***@", url)


def check_redis_url(key: str, url: str) -> str:
    """``url`` if redis-py can connect with it, else a ConfigurationError naming ``key`` and
    showing the expected forms (``localhost:6379`` is the usual mistake: it has no scheme)."""
    hint = f"{key} must be a Redis URL: {REDIS_URL_FORMS}; not {shown_url(url)!r}."
    if not _SCHEME_RE.match(url):
        guess = shown_url(f"redis://{url}")
        raise ConfigurationError(f"{hint} (It has no scheme: did you mean {guess!r}?)")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in REDIS_SCHEMES:
        raise ConfigurationError(f"{hint} ({parsed.scheme}:// is not a Redis scheme.)")
    if parsed.scheme.lower() == "unix":
        if not parsed.path:
            raise ConfigurationError(f"{hint} (A unix:// URL needs the socket's path.)")
        return url
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(f"{hint} (The port must be a number from 0 to 65535.)") from None
    db = parsed.path.strip("/")
    if db and not db.isdigit():
        raise ConfigurationError(f"{hint} (The database after the / must be a number.)")
    return url


def check_broker_url(key: str, url: str) -> str:
    """``url`` if it has the shape of a Celery broker URL (``transport://...``, several
    separated by ``;`` for failover), else a ConfigurationError naming ``key``. A Redis broker
    URL is checked as :func:`check_redis_url` checks one."""
    for part in (p.strip() for p in url.split(";")):
        if not _SCHEME_RE.match(part):
            raise ConfigurationError(
                f"{key} must be a Celery broker URL such as redis://host:port/db or "
                f"amqp://user:password@host:5672//; not {shown_url(url)!r}. (It has no scheme.)"
            )
        if part.split("://", 1)[0].lower() in REDIS_SCHEMES:
            check_redis_url(key, part)
    return url


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated deployment settings. Build one with :meth:`from_mapping`."""

    redis_url: str
    redis_timeout: float
    broker_url: str
    key_prefix: str
    queue: str
    job_ttl: int
    files_dir: str
    step_target: float
    batch_min: int
    batch_max: int
    batch_initial: int
    lease_seconds: float
    queue_timeout: float
    maintenance_interval: float
    worker_ttl: float
    max_attempts: int
    max_ids: int
    max_body: int
    upload_max_bytes: int
    confirm_timeout: float
    progress_interval: float
    checkpoint_interval: float
    max_active_jobs: int
    stream_seconds: float
    streams_per_user: int
    forget_anon_at_login: bool
    gc_freeze: bool
    content_security_policy: str

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None = None) -> Settings:
        """Read settings from ``config`` (Flask's ``app.config``), then the environment, then
        :data:`DEFAULTS`.

        :raises ConfigurationError: a value has the wrong type or is out of range.
        """
        config = config or {}

        def get(key: str) -> Any:
            if key in config and config[key] is not None:
                return config[key]
            if key in os.environ:
                return os.environ[key]
            return DEFAULTS[key]

        def number(key: str, kind: type, minimum: float) -> Any:
            raw = get(key)
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"{key} must be a number, not {raw!r}.") from None
            if value < minimum:
                raise ConfigurationError(f"{key} must be at least {minimum}, not {value}.")
            return value

        def flag(key: str) -> bool:
            raw = get(key)
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ConfigurationError(f"{key} must be true or false, not {raw!r}.")

        redis_url = check_redis_url("BATCHFLOW_REDIS_URL", str(get("BATCHFLOW_REDIS_URL")).strip())
        prefix = str(get("BATCHFLOW_KEY_PREFIX"))
        if not _PREFIX_RE.match(prefix):
            raise ConfigurationError(
                "BATCHFLOW_KEY_PREFIX must be 1-64 letters, digits, '_', '.' or '-', "
                f"not {prefix!r}."
            )
        settings = cls(
            redis_url=redis_url,
            redis_timeout=number("BATCHFLOW_REDIS_TIMEOUT", float, 0.1),
            broker_url=check_broker_url(
                "BATCHFLOW_BROKER_URL", str(get("BATCHFLOW_BROKER_URL") or redis_url).strip()
            ),
            key_prefix=prefix,
            queue=str(get("BATCHFLOW_QUEUE")),
            job_ttl=number("BATCHFLOW_JOB_TTL", int, 1),
            files_dir=str(get("BATCHFLOW_FILES_DIR")),
            step_target=number("BATCHFLOW_STEP_TARGET", float, 0.001),
            batch_min=number("BATCHFLOW_BATCH_MIN", int, 1),
            batch_max=number("BATCHFLOW_BATCH_MAX", int, 1),
            batch_initial=number("BATCHFLOW_BATCH_INITIAL", int, 1),
            lease_seconds=number("BATCHFLOW_LEASE_SECONDS", float, 0.1),
            queue_timeout=number("BATCHFLOW_QUEUE_TIMEOUT", float, 0.1),
            maintenance_interval=number("BATCHFLOW_MAINTENANCE_INTERVAL", float, 0.05),
            worker_ttl=number("BATCHFLOW_WORKER_TTL", float, 0.2),
            max_attempts=number("BATCHFLOW_MAX_ATTEMPTS", int, 1),
            max_ids=number("BATCHFLOW_MAX_IDS", int, 1),
            max_body=number("BATCHFLOW_MAX_BODY", int, 1024),
            upload_max_bytes=number("BATCHFLOW_UPLOAD_MAX_BYTES", int, 1),
            confirm_timeout=number("BATCHFLOW_CONFIRM_TIMEOUT", float, 0.1),
            progress_interval=number("BATCHFLOW_PROGRESS_INTERVAL", float, 0.01),
            checkpoint_interval=number("BATCHFLOW_CHECKPOINT_INTERVAL", float, 0.01),
            max_active_jobs=number("BATCHFLOW_MAX_ACTIVE_JOBS", int, 0),
            stream_seconds=number("BATCHFLOW_STREAM_SECONDS", float, 1.0),
            streams_per_user=number("BATCHFLOW_STREAMS_PER_USER", int, 1),
            forget_anon_at_login=flag("BATCHFLOW_FORGET_ANON_AT_LOGIN"),
            gc_freeze=flag("BATCHFLOW_GC_FREEZE"),
            content_security_policy=str(get("BATCHFLOW_CONTENT_SECURITY_POLICY") or ""),
        )
        if settings.batch_min > settings.batch_max:
            raise ConfigurationError("BATCHFLOW_BATCH_MIN must not exceed BATCHFLOW_BATCH_MAX.")
        return settings

    def clamp_batch(self, size: int) -> int:
        """``size`` bounded by ``batch_min`` and ``batch_max``."""
        return max(self.batch_min, min(self.batch_max, size))
