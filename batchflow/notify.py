"""Telling people their job ended: in the app, by email, by webhook, through a hook.

When a step commits a job's ending, the same commit sets ``notify_due`` (a few seconds ahead), so
the ending's notifications are pending from the moment the job ended, atomically. The worker that
ended the job then delivers them at once (:meth:`Notifier.deliver`) and moves the job out of the
active index. Should it die in between, maintenance finds the ended job still in the active index
once ``notify_due`` has passed and sends the ``notify`` task, which delivers what is left.

Each channel is delivered under a per-job lock and recorded (``notified``) as soon as it is
done, so a run without a crash delivers each notification once; a crash between a send and its
record sends it again (at least once), with the same Message-ID and idempotency key. A channel
that fails is tried again with backoff (``BATCHFLOW_NOTIFY_BACKOFF``, doubling, up to an hour)
until ``BATCHFLOW_NOTIFY_ATTEMPTS``, then given up and logged; no failure changes the job.

Channels: ``app`` (the owner's inbox of unseen endings: the toast and the count), ``email`` (if
``BATCHFLOW_NOTIFY_EMAIL`` is on and the owner asked on the start form, or the handler's
``notify_email`` is True), ``webhook`` (the handler's ``webhook_url``, else
``BATCHFLOW_WEBHOOK_URL``), ``hook`` (``BatchFlow(on_notify=...)``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .exceptions import ConfigurationError, JobNotFound
from .history import History, outcome_of
from .i18n import using
from .inbox import Deliveries, Inbox
from .job import UserLoader
from .mail import build_email, send_email
from .meter import Meter
from .notices import Notice, notice_of
from .registry import Registry
from .schema import F, Status, ms
from .state import JobState
from .store import Store
from .webhooks import PermanentFailure, post

log = logging.getLogger("batchflow")

EmailAddress = Callable[[Any], "str | None"]
OnNotify = Callable[[Notice], None]
#: The longest wait between two tries of one notification.
BACKOFF_MAX = 3600.0
#: How long an ended job's inbox entry may wait to be seen, beyond the job's own TTL.
INBOX_GRACE = 3600


def default_email_address(user: Any) -> str | None:
    """The job owner's address: the user object's ``email`` attribute (None: no email)."""
    return getattr(user, "email", None) or None


@dataclasses.dataclass(frozen=True)
class NotifyHooks:
    """The app's part in notifications: ``on_notify(notice)`` for channels of its own,
    ``email_address(user)`` for the address of a job's owner (loaded by ``load_user``), and the
    blueprint's ``url_prefix`` for the links."""

    on_notify: OnNotify | None = None
    email_address: EmailAddress = default_email_address
    url_prefix: str = "/jobs"


class Notifier:
    """Delivers the notifications of jobs' endings.

    :param settings: deployment settings.
    :param store: job state.
    :param registry: the handlers (their ``notify_email`` and ``webhook_url``).
    :param load_user: the app's user loader, for the owner's email address.
    :param hooks: the app's hooks.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        load_user: UserLoader = None,
        hooks: NotifyHooks | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.load_user = load_user
        self.hooks = hooks or NotifyHooks()
        self.inbox = Inbox(store.client, store.keys)
        self.deliveries = Deliveries(store.client, store.keys)
        #: Each handler's last runs, and the figures of /metrics: a job's run is kept, and its
        #: figures are added to its handler's, as it leaves the active index (:func:`retire`).
        self.history = History(
            store.client, store.keys, settings.history_runs, settings.history_days
        )
        self.meter = Meter(store.client, store.keys)
        self.check(registry)

    def check(self, registry: Registry) -> None:
        """ConfigurationError for a handler that asks for a channel the settings leave off."""
        for name in registry.names():
            handler = registry.get(name).handler_class
            if handler.notify_email and not self.settings.notify_email:
                raise ConfigurationError(
                    f"Handler {name!r} emails its owner (notify_email = True): turn email on "
                    "with BATCHFLOW_NOTIFY_EMAIL, BATCHFLOW_BASE_URL and the MAIL_* settings."
                )
            if handler.webhook_url and len(self.settings.webhook_secret or "") < 16:
                raise ConfigurationError(
                    f"Handler {name!r} has a webhook_url: set BATCHFLOW_WEBHOOK_SECRET (at "
                    "least 16 characters); each POST is signed with it."
                )

    @property
    def lock_seconds(self) -> float:
        """How long one delivery may hold a job (every channel's timeout, and room to spare);
        maintenance leaves an ended job to its worker this long."""
        return 4 * self.settings.notify_timeout + self.settings.lease_seconds

    def due_ms(self, now: float) -> int:
        """``notify_due`` for an ending committed at ``now``."""
        return ms(now + self.lock_seconds)

    def deliver(self, job_id: str, now: float | None = None) -> bool:
        """Deliver what is due of the job's ending; True when nothing is pending any more (the
        job has then left the active index). False if another process is delivering now."""
        now = time.time() if now is None else now
        token = self.deliveries.lock(job_id, self.lock_seconds)
        if token is None:
            return False
        try:
            return self._deliver(job_id, now)
        finally:
            self.deliveries.unlock(job_id, token)

    def _deliver(self, job_id: str, now: float) -> bool:
        try:
            fields, messages = self.store.snapshot(job_id)
        except JobNotFound:
            self.store.finish(job_id, now)
            return True
        if not Status(fields.get(F.STATUS, "")).terminal:
            return True  # continued since it ended: its next ending will be told
        record = Deliveries.record_of(fields)
        with using(fields.get(F.LOCALE)):  # the texts in the language of the one who started it
            state = JobState.from_stored(fields, messages)
            notice = notice_of(state.to_dict(now), fields.get(F.SEQ, ""), self._links(job_id))
            for channel, send in self._channels(state).items():
                entry = record.get(channel) or {}
                if entry.get("done") or entry.get("at", 0) > ms(now):
                    continue
                record[channel] = self._attempt(channel, send, notice, entry, now)
                # Kept at once: a send recorded is not repeated, even if a later channel crashes.
                self.deliveries.save(job_id, record, self.due_ms(now))
        waiting = [e["at"] for e in record.values() if isinstance(e, dict) and not e.get("done")]
        due = min(waiting) if waiting else None
        self.deliveries.save(job_id, record, due)
        if due is None:
            retire(self.history, self.meter, fields, now)
            self.store.finish(job_id, now + self.settings.job_ttl)
        return due is None

    def _attempt(
        self,
        channel: str,
        send: Callable[[Notice], str],
        notice: Notice,
        entry: dict[str, Any],
        now: float,
    ) -> dict[str, Any]:
        """One try of one channel; the channel's new record."""
        tries = int(entry.get("n", 0)) + 1
        try:
            done = send(notice)
        except Exception as exc:  # noqa: BLE001 - retried with backoff; the job is unchanged
            s = self.settings
            if isinstance(exc, PermanentFailure) or tries >= s.notify_attempts:
                log.error(
                    "job %s: %s notification given up after %s tries: %s",
                    notice.job_id,
                    channel,
                    tries,
                    exc,
                )
                return {"done": "given up", "n": tries, "error": str(exc)[:300]}
            wait = min(s.notify_backoff * 2 ** (tries - 1), BACKOFF_MAX)
            log.warning(
                "job %s: %s notification failed (%s); trying again in %.0f s",
                notice.job_id,
                channel,
                exc,
                wait,
            )
            return {"n": tries, "at": ms(now + wait), "error": str(exc)[:300]}
        log.info("job %s: %s notification %s", notice.job_id, channel, done)
        return {"done": done, "n": tries}

    # -- the channels ----------------------------------------------------------------------

    def _channels(self, state: JobState) -> dict[str, Callable[[Notice], str]]:
        channels: dict[str, Callable[[Notice], str]] = {"app": self._to_inbox}
        handler = self.registry.find(state.fields.get(F.HANDLER, ""))
        cls = handler.handler_class if handler is not None else None
        asked = state.fields.get(F.NOTIFY_EMAIL) == "1"
        wants = cls.notify_email if cls is not None and cls.notify_email is not None else asked
        if self.settings.notify_email and wants:
            channels["email"] = self._by_email
        if (cls is not None and cls.webhook_url) or self.settings.webhook_url:
            channels["webhook"] = self._by_webhook
        if self.hooks.on_notify is not None:
            channels["hook"] = self._to_hook
        return channels

    def _to_inbox(self, notice: Notice) -> str:
        ended = notice.ended_at or time.time()
        self.inbox.add(notice.owner, notice.job_id, ended, self.settings.job_ttl + INBOX_GRACE)
        return "kept"

    def _by_email(self, notice: Notice) -> str:
        user = self.load_user(notice.owner) if self.load_user else None
        address = self.hooks.email_address(user) if user is not None else None
        if not address:
            return "skipped: no address for the owner"
        s = self.settings
        assert s.mail.sender and s.base_url  # Settings.check_notifications
        message = build_email(notice, to=address, sender=s.mail.sender, base_url=s.base_url)
        send_email(s.mail, message, s.notify_timeout)
        return "sent"

    def _by_webhook(self, notice: Notice) -> str:
        handler = self.registry.find(notice.handler)
        url = (handler.handler_class.webhook_url if handler else None) or self.settings.webhook_url
        body = {
            "event": "job.ended",
            "idempotency_key": notice.key,
            **notice.status,
            "url": notice.url,
            "action_url": notice.action_url,
        }
        assert url and self.settings.webhook_secret  # Settings and check() made sure
        code = post(
            url,
            json.dumps(body, separators=(",", ":")).encode(),
            secret=self.settings.webhook_secret,
            key=notice.key,
            timeout=self.settings.notify_timeout,
            agent="batchflow-webhook",
        )
        return f"sent ({code})"

    def _to_hook(self, notice: Notice) -> str:
        assert self.hooks.on_notify is not None
        self.hooks.on_notify(notice)
        return "sent"

    def _links(self, job_id: str) -> dict[str, str | None]:
        """Absolute URLs when ``BATCHFLOW_BASE_URL`` is set, else paths."""
        page = f"{self.settings.base_url or ''}{self.hooks.url_prefix.rstrip('/')}/{job_id}"
        return {"page": page, "download": f"{page}/download", "results": f"{page}/results"}


def retire(history: History, meter: Meter, fields: dict[str, str], now: float) -> None:
    """What happens once as an ended job leaves the active index: its run joins its handler's
    history, and its figures its handler's totals (which takes it out of the index). Neither
    stops the other, nor the caller: maintenance tries again while the job stays active."""
    outcome = outcome_of(fields)
    if outcome is None:
        return
    try:
        history.keep(fields, now)
    except Exception:  # noqa: BLE001 - a run missing from the history stops nothing
        log.warning("job %s: could not keep its run history", fields.get(F.ID), exc_info=True)
    try:
        meter.fold(fields, outcome)
    except Exception:  # noqa: BLE001 - the job stays in the index: maintenance folds it later
        log.warning("job %s: could not add up its figures", fields.get(F.ID), exc_info=True)
