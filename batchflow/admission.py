"""Admission: whether an owner may start one more job now, decided atomically in Redis.

Each owner has a hash of their active jobs (``Keys.owner_active``), written by the ADMIT script
(:mod:`batchflow.scripts`) in the same atomic step that checks it, so the limit holds across web
processes and under concurrent starts, and two identical starts of a de-duplicated handler get
one job. Entries are dropped by ADMIT itself once their job has ended or is gone (see the script),
and by :meth:`Admission.release` when a job is deleted: the step path pays nothing for this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import redis
import redis.exceptions

from .exceptions import Unavailable
from .keys import Keys
from .schema import AdmitCode
from .scripts import ADMIT
from .store import CREATE_GRACE_MS

#: The pool of jobs that share the owner-wide limit (``BATCHFLOW_MAX_ACTIVE_JOBS``); a handler
#: with its own ``max_active_jobs`` is its own pool, named after it (handler names have no "*").
SHARED_POOL = "*"

_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


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
        head, tail = self.keys.job_around_id()
        try:
            reply = self._admit(
                keys=[self.keys.owner_active(owner)],
                args=[job_id, pool, fingerprint, limit, now_ms, CREATE_GRACE_MS, head, tail],
            )
        except _DOWN as exc:
            raise Unavailable.redis(exc) from exc
        code = AdmitCode(reply[0])
        if code is AdmitCode.SAME:
            return Admitted(code, [reply[1]])
        if code is AdmitCode.FULL:
            return Admitted(code, list(reply[1]))
        return Admitted(code)

    def release(self, owner: str, job_id: str) -> None:
        """Give up ``job_id``'s place (it was deleted, or its start failed).

        :raises Unavailable: Redis does not answer.
        """
        try:
            self.client.hdel(self.keys.owner_active(owner), job_id)
        except _DOWN as exc:
            raise Unavailable.redis(exc) from exc
