"""What the people who start jobs have not seen yet, and how each ending's notifications went.

- :class:`Inbox`: per owner, the ended jobs they have not seen (``Keys.unseen``, a sorted set
  scored by when each ended, the newest :data:`UNSEEN_KEPT` kept). The notifier adds a job when
  it ends; the web reads the set for the toast and the count. A job counts as seen once the job
  hash's ``seen`` field holds the seq of its ending (its owner opened its page, or dismissed the
  toast); reading the set drops those, so a page that marks a job seen just before the notifier
  adds it (the page saw the ending live) cannot leave it unseen.
- :class:`Deliveries`: per job, how its ending's notifications went (``notified``, JSON, and
  ``notify_due``, in the job hash), and the lock one process holds while it delivers them.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

import redis

from .keys import Keys
from .schema import F, Status, as_json
from .scripts import HSET_IF_EXISTS, UNLOCK
from .store import translating

#: The most unseen jobs kept per owner (the oldest go first).
UNSEEN_KEPT = 50


class Inbox:
    """Each owner's ended jobs they have not seen.

    :param client: a redis-py client created with ``decode_responses=True``.
    :param keys: the store's key builder.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._set_if_exists = client.register_script(HSET_IF_EXISTS)

    @translating
    def add(self, owner: str, job_id: str, ended_at: float, ttl: int) -> None:
        """Put an ended job in its owner's inbox, which lives ``ttl`` seconds after the last."""
        key = self.keys.unseen(owner)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {job_id: ended_at})
            pipe.zremrangebyrank(key, 0, -UNSEEN_KEPT - 1)
            pipe.expire(key, ttl)
            pipe.execute()

    @translating
    def unseen(self, owner: str) -> list[dict[str, str]]:
        """The owner's unseen ended jobs, newest first, as their job hashes (one round trip
        for them all); jobs seen or gone are dropped from the inbox on the way."""
        return self._sift(owner, None)

    @translating
    def unseen_ids(self, owner: str) -> list[str]:
        """The ids of :meth:`unseen`, reading three fields a job, not the whole hash: cheap
        enough for every page of the app."""
        return [fields[F.ID] for fields in self._sift(owner, (F.ID, F.STATUS, F.SEQ, F.SEEN))]

    def count(self, owner: str) -> int:
        """How many ended jobs the owner has not seen."""
        return len(self.unseen_ids(owner))

    def _sift(self, owner: str, names: tuple[str, ...] | None) -> list[dict[str, str]]:
        """The inbox's jobs (``names`` of their fields, or whole hashes) that are still unseen
        endings, newest first; the others (seen, continued, gone) leave the inbox."""
        key = self.keys.unseen(owner)
        job_ids = cast(list[str], self.client.zrevrange(key, 0, UNSEEN_KEPT - 1))
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                if names:
                    pipe.hmget(self.keys.job(job_id), *names)
                else:
                    pipe.hgetall(self.keys.job(job_id))
            replies = pipe.execute()
        kept, dropped = [], []
        for job_id, reply in zip(job_ids, replies, strict=True):
            fields = dict(zip(names, reply, strict=True)) if names else reply
            status = fields.get(F.STATUS)
            if status and Status(status).terminal and fields.get(F.SEEN) != fields.get(F.SEQ):
                kept.append(fields)
            else:
                dropped.append(job_id)
        if dropped:
            self.client.zrem(key, *dropped)
        return kept

    @translating
    def mark_seen(self, owner: str, job_ids: list[str]) -> None:
        """The owner has seen these jobs' endings (jobs not ended, or not theirs, are left as
        they are)."""
        if not job_ids:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), F.STATUS, F.SEQ, F.OWNER)
            replies = pipe.execute()
        for job_id, (status, seq, job_owner) in zip(job_ids, replies, strict=True):
            if status and Status(status).terminal and job_owner == owner:
                self._set_if_exists(keys=[self.keys.job(job_id)], args=["", F.SEEN, seq])
        self.client.zrem(self.keys.unseen(owner), *job_ids)


class Deliveries:
    """How a job's ending was delivered to each channel, and the lock of the one delivering.

    :param client: a redis-py client created with ``decode_responses=True``.
    :param keys: the store's key builder.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._set_if_exists = client.register_script(HSET_IF_EXISTS)
        self._unlock = client.register_script(UNLOCK)

    @translating
    def lock(self, job_id: str, seconds: float) -> str | None:
        """A token if this caller may deliver the job's notifications for ``seconds``, else None
        (another process is delivering them)."""
        token = secrets.token_hex(8)
        taken = self.client.set(self.keys.notifying(job_id), token, nx=True, px=int(seconds * 1e3))
        return token if taken else None

    @translating
    def unlock(self, job_id: str, token: str) -> None:
        self._unlock(keys=[self.keys.notifying(job_id)], args=[token])

    @staticmethod
    def record_of(fields: dict[str, str]) -> dict[str, Any]:
        """The delivery record of the job's current ending (a fresh one after a new ending)."""
        record = as_json(fields.get(F.NOTIFIED), {})
        seq = fields.get(F.SEQ, "")
        return record if isinstance(record, dict) and record.get("seq") == seq else {"seq": seq}

    @translating
    def save(self, job_id: str, record: dict[str, Any], due_ms: int | None) -> bool:
        """Keep ``record``; ``due_ms`` is when a delivery is due again (None: none is pending).
        False if the job is gone."""
        pairs = [F.NOTIFIED, json.dumps(record, separators=(",", ":"))]
        if due_ms is not None:
            pairs += [F.NOTIFY_DUE, str(due_ms)]
        drop = "" if due_ms is not None else F.NOTIFY_DUE
        return bool(self._set_if_exists(keys=[self.keys.job(job_id)], args=[drop, *pairs]))

    @translating
    def postpone(self, job_id: str, due_ms: int) -> None:
        """Move ``notify_due`` on (while a ``notify`` task is on its way)."""
        self._set_if_exists(keys=[self.keys.job(job_id)], args=["", F.NOTIFY_DUE, str(due_ms)])
