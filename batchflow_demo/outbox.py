"""The demo's outbox: the notification emails batchflow wrote to ``BATCHFLOW_MAIL_OUTBOX`` (one
``.eml`` file per job ending), read back for the demo's ``/outbox`` page."""

from __future__ import annotations

import email
import email.policy
import os
from typing import Any

#: The most emails the page shows (the newest).
SHOWN = 50


def read_outbox(folder: str) -> list[dict[str, Any]]:
    """The emails in ``folder``, newest first."""
    if not os.path.isdir(folder):
        return []
    paths = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".eml")]
    paths.sort(key=os.path.getmtime, reverse=True)
    mails = []
    for path in paths[:SHOWN]:
        with open(path, "rb") as handle:
            message = email.message_from_binary_file(handle, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        mails.append(
            {
                "subject": str(message["Subject"]),
                "to": str(message["To"]),
                "sender": str(message["From"]),
                "date": str(message["Date"]),
                "message_id": str(message["Message-ID"]),
                "body": body.get_content() if body is not None else "",
            }
        )
    return mails
