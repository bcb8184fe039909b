"""A few fields of many jobs, for the admin page's counts: one ZREVRANGE and one pipelined HMGET
per thousand jobs, newest first, however many there are up to the limit."""

from __future__ import annotations

from typing import cast

import redis

from .keys import Keys
from .schema import F

#: The fields a census reads of each job.
FIELDS = (F.ID, F.HANDLER, F.OWNER, F.STATUS, F.BAD, F.STALLED, F.CREATED_AT, F.FINISHED_AT)


class Census:
    """Reads the jobs batchflow keeps (until each expires), a few fields of each.

    :param client: the store's Redis client.
    :param keys: the key builder.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def newest(self, limit: int, page: int = 1000) -> tuple[list[dict[str, str]], bool]:
        """The :data:`FIELDS` of the ``limit`` newest jobs (those whose state is gone are left
        out), and whether older jobs were left unread."""
        ids = cast(list[str], self.client.zrevrange(self.keys.all_jobs, 0, limit))
        more = len(ids) > limit
        found: list[dict[str, str]] = []
        for start in range(0, min(len(ids), limit), page):
            chunk = ids[start : min(start + page, limit)]
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hmget(self.keys.job(job_id), *FIELDS)
                replies = pipe.execute()
            for values in replies:
                if values[0] is not None:
                    found.append({k: v or "" for k, v in zip(FIELDS, values, strict=True)})
        return found, more
