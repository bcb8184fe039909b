"""Admission: whether an owner may start one more job now, decided atomically in Redis.

Each owner has a hash of their active jobs (``Keys.owner_active``), written by the ADMIT script
(:mod:`batchflow.scripts`) in the same atomic step that checks it, so the limit holds across web
processes and under concurrent starts, and two identical starts of a de-duplicated handler get
one job. Entries whose job has ended or is gone are found by reading their jobs' status just
before (plain commands: each job hash is in its own Cluster slot) and dropped by ADMIT, and by
:meth:`Admission.release` when a job is deleted: the step path pays nothing for this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, cast

import redis

from .exceptions import Unavailable
from .keys import Keys
from .redisconn import DOWN
from .schema import AdmitCode, F, is_terminal
from .scripts import ADMIT
from .store import CREATE_GRACE_MS

#: The pool of jobs that share the owner-wide limit (``BATCHFLOW_MAX_ACTIVE_JOBS``); a handler
#: with its own ``max_active_jobs`` is its own pool, named after it (handler names have no "*").
SHARED_POOL = "*"


@dataclasses.dataclass(frozen=True)
class Admitted:
    """ADMIT's answer: ``code``; with ``SAME``, the existing job's id in ``job_ids``; with
    ``FULL``, the active jobs that fill the limit."""

    code: AdmitCode
    job_ids: list[str] = dataclasses.field(default_factory=list)


def fingerprint(handler: str, params: dict[str, Any], ids: list[str] | None) -> str:
    """What makes two starts the same job: the handler, the validated parameters and the ids."""
    text = json.dumps([handler, params, ids], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Admission:
    """The per-owner limit on active jobs and the de-duplication of identical starts.

    :param client: a redis-py client created with ``decode_responses=True``.
    :param keys: the store's key builder.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._admit = client.register_script(ADMIT)

    def admit(
        self, owner: str, job_id: str, *, pool: str, limit: int, fingerprint: str, now_ms: int
    ) -> Admitted:
        """Take a place for ``job_id`` among ``owner``'s active jobs in ``pool``, unless ``limit``
        (0 = none) is reached or an active job has the same ``fingerprint`` ("" = none).

        :raises Unavailable: Redis does not answer.
        """
        key = self.keys.owner_active(owner)
        try:
            reply = self._admit(
                keys=[key],
                args=[job_id, pool, fingerprint, limit, now_ms, *self._ended(key, now_ms)],
            )
        except DOWN as exc:
            raise Unavailable.redis(exc) from exc
        code = AdmitCode(reply[0])
        if code is AdmitCode.SAME:
            return Admitted(code, [reply[1]])
        if code is AdmitCode.FULL:
            return Admitted(code, list(reply[1]))
        return Admitted(code)

    def _ended(self, key: str, now_ms: int) -> list[str]:
        """The entries of the owner's hash ``key`` whose job has ended (a terminal status) or is
        gone (no hash, admitted longer ago than a create may take: expired, deleted, or never
        written by a starter that died)."""
        entries = cast(dict[str, str], self.client.hgetall(key))
        if not entries:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in entries:
                pipe.hget(self.keys.job(job_id), F.STATUS)
            statuses = pipe.execute()
        ended = []
        for (job_id, entry), status in zip(entries.items(), statuses, strict=True):
            admitted_ms = int(entry.split(" ", 1)[0] or 0)
            if is_terminal(status) or (status is None and admitted_ms + CREATE_GRACE_MS <= now_ms):
                ended.append(job_id)
        return ended

    def release(self, owner: str, job_id: str) -> None:
        """Give up ``job_id``'s place (it was deleted, or its start failed).

        :raises Unavailable: Redis does not answer.
        """
        try:
            self.client.hdel(self.keys.owner_active(owner), job_id)
        except DOWN as exc:
            raise Unavailable.redis(exc) from exc
