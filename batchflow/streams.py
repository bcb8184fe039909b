"""Event-stream slots: how many progress streams (``GET /jobs/<id>/events``) each identity holds
open, counted in Redis so that every web process shares one cap.

A stream holds a server thread for as long as it is open. Each open stream holds a slot: a member
of its identity's sorted set, scored by the end of its lease. The web process that serves the
stream refreshes the lease at every keep-alive and releases the slot when the stream closes
(the client went away, its lifetime is over, the job ended). A web process that dies releases
nothing: its slots lapse with their leases, so a cap is never held for good by the dead.
"""

from __future__ import annotations

import logging
import secrets
import time

import redis
import redis.exceptions

from .exceptions import Unavailable
from .keys import Keys
from .schema import ms

log = logging.getLogger("batchflow")

#: Seconds between two keep-alives of an idle stream: a client that went away is noticed at the
#: next write, so its slot is released within this much.
KEEPALIVE = 15.0
#: Seconds a slot lives without a refresh; well above :data:`KEEPALIVE`, so a live stream never
#: loses its slot to a slow keep-alive, and the slots of a web process that died lapse by then.
LEASE = 4 * KEEPALIVE

# Take a slot if the identity holds fewer than the cap (after dropping lapsed slots). The key
# expires with its newest lease: an identity whose streams are all gone leaves nothing behind.
ACQUIRE = """
-- KEYS[1] = the identity's slots: a sorted set, token -> the end of its lease (ms)
-- ARGV[1] = now (ms), ARGV[2] = the new lease's end (ms), ARGV[3] = the cap, ARGV[4] = token
-- Returns 1 when the slot is taken, 0 when the identity already holds the cap.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# Move a held slot's lease on. A slot that lapsed (Redis stalled for a whole lease) may have been
# given to another stream meanwhile: it is not taken back.
REFRESH = """
-- KEYS[1] = the identity's slots
-- ARGV[1] = the new lease's end (ms), ARGV[2] = token
-- Returns 1 when the slot is still held, 0 when it lapsed.
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""


class StreamSlots:
    """The open event streams of every identity, capped per identity across web processes.

    :param client: the store's client (``decode_responses=True``).
    :param keys: the store's key builder.
    :param keepalive: seconds between two writes to an idle stream (see :data:`KEEPALIVE`).
    """

    def __init__(self, client: redis.Redis, keys: Keys, keepalive: float = KEEPALIVE) -> None:
        self.client = client
        self.keys = keys
        self.keepalive = keepalive
        self._acquire = client.register_script(ACQUIRE)
        self._refresh = client.register_script(REFRESH)

    @property
    def lease(self) -> float:
        """Seconds a slot lives without a refresh: :data:`LEASE` per :data:`KEEPALIVE`."""
        return self.keepalive * LEASE / KEEPALIVE

    def acquire(self, identity: str, cap: int, lease: float | None = None) -> str | None:
        """Take one of ``identity``'s ``cap`` slots for ``lease`` seconds (default
        :attr:`lease`).

        :returns: the slot's token, or None when ``identity`` holds ``cap`` slots already.
        :raises Unavailable: Redis does not answer.
        """
        token = secrets.token_urlsafe(12)
        now, lease = ms(time.time()), self.lease if lease is None else lease
        try:
            taken = self._acquire(
                keys=[self.keys.streams(identity)], args=[now, now + ms(lease), cap, token]
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable.redis(exc) from exc
        return token if taken else None

    def refresh(self, identity: str, token: str, lease: float | None = None) -> bool:
        """Move the slot's lease on by ``lease`` seconds (default :attr:`lease`); False if it
        lapsed (or Redis failed): the stream should end then, and its client open a new one."""
        lease = self.lease if lease is None else lease
        try:
            held = self._refresh(
                keys=[self.keys.streams(identity)], args=[ms(time.time() + lease), token]
            )
        except redis.exceptions.RedisError:
            log.warning("could not refresh an event stream's slot", exc_info=True)
            return False
        return bool(held)

    def release(self, identity: str, token: str) -> None:
        """Give the slot back (again is fine). Never raises: a slot not released lapses."""
        try:
            self.client.zrem(self.keys.streams(identity), token)
        except redis.exceptions.RedisError:
            log.warning("could not release an event stream's slot; it lapses", exc_info=True)

    def held(self, identity: str) -> int:
        """How many slots ``identity`` holds now (lapsed ones not counted)."""
        try:
            return int(
                self.client.zcount(self.keys.streams(identity), f"({ms(time.time())}", "+inf")
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable.redis(exc) from exc
