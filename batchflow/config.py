"""Deployment settings: the ``BATCHFLOW_*`` keys, read from Flask config or the environment.

Each key is documented once, in the README's configuration table; :data:`DEFAULTS` is the source of
truth for names and default values.
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigurationError
from .redisurl import (
    REDIS_SCHEMES,
    SERVER,
    SERVER_SCHEMES,
    has_scheme,
    parse_redis_url,
    shown_url,
)

DEFAULTS: dict[str, Any] = {
    "BATCHFLOW_REDIS_URL": "redis://127.0.0.1:6379/0",
    "BATCHFLOW_BROKER_URL": None,  # None: the same Redis as BATCHFLOW_REDIS_URL
    "BATCHFLOW_REDIS_TIMEOUT": 2.0,
    # Replicas that must have each step's commit before the next step starts (0: do not wait).
    "BATCHFLOW_REDIS_WAIT_REPLICAS": 0,
    "BATCHFLOW_REDIS_WAIT_TIMEOUT": 1.0,
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
    "BATCHFLOW_HISTORY_RUNS": 100,  # ended jobs kept per handler in its run history (0: none)
    "BATCHFLOW_HISTORY_DAYS": 30.0,  # ... and none older than this
    "BATCHFLOW_METRICS_TOKEN": None,  # a scraper presents it as "Authorization: Bearer <token>"
    "BATCHFLOW_LOG_FORMAT": "text",  # or "json": batchflow's log lines as JSON, one per line
    # Notifications when a job ends (see notify.py): the app's address for absolute links, email
    # (SMTP with Flask-Mail's MAIL_* keys, or .eml files in an outbox folder), a signed webhook.
    "BATCHFLOW_BASE_URL": None,
    "BATCHFLOW_NOTIFY_EMAIL": False,
    "BATCHFLOW_MAIL_OUTBOX": None,
    "BATCHFLOW_WEBHOOK_URL": None,
    "BATCHFLOW_WEBHOOK_SECRET": None,
    "BATCHFLOW_NOTIFY_TIMEOUT": 10.0,  # seconds one SMTP or HTTP attempt may take
    "BATCHFLOW_NOTIFY_ATTEMPTS": 10,  # then the notification is given up (and logged)
    "BATCHFLOW_NOTIFY_BACKOFF": 5.0,  # seconds before the first retry, doubling up to an hour
    "BATCHFLOW_CONTENT_SECURITY_POLICY": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
    ),
}

#: Flask-Mail's keys and defaults, which batchflow's email follows: an app that uses Flask-Mail
#: configures the SMTP server once for both.
MAIL_DEFAULTS: dict[str, Any] = {
    "MAIL_SERVER": "localhost",
    "MAIL_PORT": 25,
    "MAIL_USE_TLS": False,
    "MAIL_USE_SSL": False,
    "MAIL_USERNAME": None,
    "MAIL_PASSWORD": None,
    "MAIL_DEFAULT_SENDER": None,
}

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _token(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        raise ConfigurationError(
            "BATCHFLOW_METRICS_TOKEN must be at least 16 characters (random, kept out of the "
            "code): a scraper presents it to read every job's figures."
        )
    return value


def _log_format(value: Any) -> str:
    chosen = str(value or "text").strip().lower()
    if chosen not in ("text", "json"):
        raise ConfigurationError(f"BATCHFLOW_LOG_FORMAT must be 'text' or 'json', not {value!r}.")
    return chosen


def check_redis_url(key: str, url: str) -> str:
    """``url`` if it is a Redis URL batchflow can connect with (see :mod:`batchflow.redisurl`),
    else a ConfigurationError naming ``key`` and showing the expected forms."""
    parse_redis_url(url, key)
    return url


def check_broker_url(key: str, url: str) -> str:
    """``url`` if it has the shape of a Celery broker URL (``transport://...``, several
    separated by ``;`` for failover), else a ConfigurationError naming ``key``. A Redis broker
    URL is checked as :func:`check_redis_url` checks one."""
    for part in (p.strip() for p in url.split(";")):
        if not has_scheme(part):
            raise ConfigurationError(
                f"{key} must be a Celery broker URL such as redis://host:port/db or "
                f"amqp://user:password@host:5672//; not {shown_url(url)!r}. (It has no scheme.)"
            )
        scheme = part.split("://", 1)[0].lower()
        if scheme in REDIS_SCHEMES and scheme not in SERVER_SCHEMES:
            raise ConfigurationError(
                f"{key}: Celery's Redis broker cannot use a Redis Cluster or connect through "
                f"Sentinel here; give it a Redis of its own (redis://host:port/db) or RabbitMQ "
                f"(amqp://user:password@host:5672//), not {shown_url(part)!r}."
            )
        if scheme in SERVER_SCHEMES:
            check_redis_url(key, part)
    return url


def _broker_url(configured: Any, redis_url: str) -> str:
    """``BATCHFLOW_BROKER_URL`` checked; unset, the state's Redis when that is one server."""
    if configured is not None and str(configured).strip():
        return check_broker_url("BATCHFLOW_BROKER_URL", str(configured).strip())
    if parse_redis_url(redis_url).kind != SERVER:
        raise ConfigurationError(
            "BATCHFLOW_REDIS_URL is a Redis Cluster or Sentinel URL, which Celery's Redis broker "
            "cannot use: set BATCHFLOW_BROKER_URL to a Redis of its own (redis://host:port/db) "
            "or to RabbitMQ (amqp://user:password@host:5672//)."
        )
    return check_broker_url("BATCHFLOW_BROKER_URL", redis_url)


def check_http_url(key: str, url: str) -> str:
    """``url`` without a trailing slash if it is an absolute http(s) URL, else a
    ConfigurationError naming ``key``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        raise ConfigurationError(
            f"{key} must be an absolute http:// or https:// URL such as "
            f"https://app.example.com, not {url!r}."
        )
    return url.rstrip("/")


@dataclasses.dataclass(frozen=True)
class Mail:
    """How notification emails leave: SMTP (Flask-Mail's ``MAIL_*`` keys) or, with
    ``BATCHFLOW_MAIL_OUTBOX``, ``.eml`` files written to that folder instead."""

    server: str
    port: int
    use_tls: bool
    use_ssl: bool
    username: str | None
    password: str | None
    sender: str | None
    outbox: str | None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated deployment settings. Build one with :meth:`from_mapping`."""

    redis_url: str
    redis_timeout: float
    redis_wait_replicas: int
    redis_wait_timeout: float
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
    log_format: str
    history_runs: int
    metrics_token: str | None
    history_days: float
    content_security_policy: str
    base_url: str | None
    notify_email: bool
    webhook_url: str | None
    webhook_secret: str | None
    notify_timeout: float
    notify_attempts: int
    notify_backoff: float
    mail: Mail

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None = None) -> Settings:
        """Read settings from ``config`` (Flask's ``app.config``), then the environment, then
        :data:`DEFAULTS`.

        :raises ConfigurationError: a value has the wrong type or is out of range.
        """
        r = _Reader(config or {})
        get, text, number, flag = r.get, r.text, r.number, r.flag
        base_url, webhook_url = text("BATCHFLOW_BASE_URL"), text("BATCHFLOW_WEBHOOK_URL")
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
            redis_wait_replicas=number("BATCHFLOW_REDIS_WAIT_REPLICAS", int, 0),
            redis_wait_timeout=number("BATCHFLOW_REDIS_WAIT_TIMEOUT", float, 0.001),
            broker_url=_broker_url(get("BATCHFLOW_BROKER_URL"), redis_url),
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
            log_format=_log_format(get("BATCHFLOW_LOG_FORMAT")),
            history_runs=number("BATCHFLOW_HISTORY_RUNS", int, 0),
            metrics_token=_token(text("BATCHFLOW_METRICS_TOKEN")),
            history_days=number("BATCHFLOW_HISTORY_DAYS", float, 0.001),
            content_security_policy=str(get("BATCHFLOW_CONTENT_SECURITY_POLICY") or ""),
            base_url=base_url and check_http_url("BATCHFLOW_BASE_URL", base_url),
            notify_email=flag("BATCHFLOW_NOTIFY_EMAIL"),
            webhook_url=webhook_url and check_http_url("BATCHFLOW_WEBHOOK_URL", webhook_url),
            webhook_secret=text("BATCHFLOW_WEBHOOK_SECRET"),
            notify_timeout=number("BATCHFLOW_NOTIFY_TIMEOUT", float, 0.1),
            notify_attempts=number("BATCHFLOW_NOTIFY_ATTEMPTS", int, 1),
            notify_backoff=number("BATCHFLOW_NOTIFY_BACKOFF", float, 0.01),
            mail=r.mail(),
        )
        if settings.redis_wait_replicas and settings.redis_wait_timeout >= settings.redis_timeout:
            raise ConfigurationError(
                "BATCHFLOW_REDIS_WAIT_TIMEOUT must be shorter than BATCHFLOW_REDIS_TIMEOUT "
                "(the wait for the replicas is one Redis command)."
            )
        if settings.batch_min > settings.batch_max:
            raise ConfigurationError("BATCHFLOW_BATCH_MIN must not exceed BATCHFLOW_BATCH_MAX.")
        settings.check_notifications()
        return settings

    def check_notifications(self) -> None:
        """ConfigurationError for notification settings that could not work: email without the
        base URL its links need or without a sender, a webhook without its secret."""
        if self.notify_email and not self.base_url:
            raise ConfigurationError(
                "BATCHFLOW_NOTIFY_EMAIL is on, and an email links to the job's page: set "
                "BATCHFLOW_BASE_URL to the app's address, such as https://app.example.com."
            )
        if self.notify_email and not self.mail.sender:
            raise ConfigurationError(
                "BATCHFLOW_NOTIFY_EMAIL is on: set MAIL_DEFAULT_SENDER (the From address, "
                "such as 'Reports <reports@example.com>')."
            )
        if self.mail.use_tls and self.mail.use_ssl:
            raise ConfigurationError(
                "Set MAIL_USE_TLS (STARTTLS, usually port 587) or MAIL_USE_SSL (port 465), "
                "not both."
            )
        if self.webhook_url and len(self.webhook_secret or "") < 16:
            raise ConfigurationError(
                "BATCHFLOW_WEBHOOK_URL is set: set BATCHFLOW_WEBHOOK_SECRET too (at least 16 "
                "characters, random, kept out of the code); each POST is signed with it."
            )

    def clamp_batch(self, size: int) -> int:
        """``size`` bounded by ``batch_min`` and ``batch_max``."""
        return max(self.batch_min, min(self.batch_max, size))


class _Reader:
    """Reads one setting from ``config``, then the environment, then the defaults, checked."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def get(self, key: str) -> Any:
        if key in self.config and self.config[key] is not None:
            return self.config[key]
        if key in os.environ:
            return os.environ[key]
        return DEFAULTS[key] if key in DEFAULTS else MAIL_DEFAULTS[key]

    def text(self, key: str) -> str | None:
        value = self.get(key)
        return str(value).strip() or None if value is not None else None

    def number(self, key: str, kind: type, minimum: float) -> Any:
        raw = self.get(key)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{key} must be a number, not {raw!r}.") from None
        if value < minimum:
            raise ConfigurationError(f"{key} must be at least {minimum}, not {value}.")
        return value

    def flag(self, key: str) -> bool:
        raw = self.get(key)
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigurationError(f"{key} must be true or false, not {raw!r}.")

    def mail(self) -> Mail:
        return Mail(
            server=self.text("MAIL_SERVER") or "localhost",
            port=self.number("MAIL_PORT", int, 1),
            use_tls=self.flag("MAIL_USE_TLS"),
            use_ssl=self.flag("MAIL_USE_SSL"),
            username=self.text("MAIL_USERNAME"),
            password=self.text("MAIL_PASSWORD"),
            sender=_sender(self.get("MAIL_DEFAULT_SENDER")),
            outbox=self.text("BATCHFLOW_MAIL_OUTBOX"),
        )


def _sender(value: Any) -> str | None:
    """``MAIL_DEFAULT_SENDER`` as a From header: Flask-Mail also takes a (name, address) pair."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return email.utils.formataddr((str(value[0]), str(value[1])))
    return str(value).strip() or None if value is not None else None
