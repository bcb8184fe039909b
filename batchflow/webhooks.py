"""The webhook a job's ending is POSTed to: its status JSON, signed with HMAC-SHA256.

A receiver checks the signature over the raw body it received, before parsing it::

    from batchflow.webhooks import verify
    if not verify(secret, request.get_data(), request.headers.get("X-Batchflow-Signature")):
        abort(401)

and uses the ``Idempotency-Key`` header (the same for every delivery of one ending) to do its
work once when a delivery comes twice.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request

SIGNATURE_HEADER = "X-Batchflow-Signature"
KEY_HEADER = "Idempotency-Key"
#: Answers worth trying again later; any other 4xx is the receiver saying no for good.
RETRYABLE = frozenset({408, 425, 429})


class PermanentFailure(Exception):
    """The receiver refused the delivery for good (a 4xx other than :data:`RETRYABLE`)."""


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` with ``secret`` (in constant time)."""
    return bool(header) and hmac.compare_digest(signature(secret, body), str(header))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect is not followed: a signed POST goes where it was configured to go, or fails.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, *, secret: str, key: str, timeout: float, agent: str) -> int:
    """POST ``body`` (JSON) to ``url``, signed; returns the 2xx status.

    :raises PermanentFailure: a 4xx answer other than 408, 425, 429.
    :raises OSError: no connection, a timeout, a 5xx or any other non-2xx answer (worth retrying).
    """
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", agent)
    request.add_header(SIGNATURE_HEADER, signature(secret, body))
    request.add_header(KEY_HEADER, key)
    try:
        with _opener.open(request, timeout=timeout) as response:
            code = int(response.status)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in RETRYABLE:
            raise PermanentFailure(f"{url} answered {exc.code} {exc.reason}") from None
        raise OSError(f"{url} answered {exc.code} {exc.reason}") from None
    if not 200 <= code < 300:
        raise OSError(f"{url} answered {code}")
    return code
