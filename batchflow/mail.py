"""Notification emails: one plain-text message per ending, sent over SMTP with Flask-Mail's
settings (``MAIL_*``) or written as an ``.eml`` file to ``BATCHFLOW_MAIL_OUTBOX`` (the demo's
outbox, a development setting). Only the standard library: :mod:`smtplib` and :mod:`email`.
"""

from __future__ import annotations

import email.message
import email.utils
import os
import smtplib
import ssl
import tempfile
import urllib.parse

from .config import Mail
from .i18n import gettext as _
from .notices import Notice


def message_id(notice: Notice, base_url: str) -> str:
    """The same Message-ID for every delivery of one ending, so that a message sent again
    after a crash is recognised as the same one (receivers and clients drop duplicates)."""
    domain = urllib.parse.urlsplit(base_url).hostname or "batchflow.invalid"
    return f"<batchflow.{notice.key}@{domain}>"


def build_email(
    notice: Notice, *, to: str, sender: str, base_url: str
) -> email.message.EmailMessage:
    """The email telling ``to`` how their job ended, with a link to its page."""
    msg = email.message.EmailMessage()
    msg["Subject"] = f"{notice.title}: {notice.headline}"
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = email.utils.formatdate(notice.ended_at, usegmt=True)
    msg["Message-ID"] = message_id(notice, base_url)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg["X-Batchflow-Job"] = notice.job_id
    lines = [notice.title, "", f"{notice.headline}. {notice.summary}".strip()]
    if notice.message:
        lines += ["", notice.message]
    lines += ["", _("See the job: %(url)s", url=notice.url)]
    if notice.action_url != notice.url:
        lines.append(f"{notice.action}: {notice.action_url}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send_email(mail: Mail, message: email.message.EmailMessage, timeout: float) -> None:
    """Send ``message`` (raises on any failure: the notifier retries with backoff)."""
    if mail.outbox:
        _write(mail.outbox, message)
        return
    context = ssl.create_default_context()
    if mail.use_ssl:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            mail.server, mail.port, timeout=timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(mail.server, mail.port, timeout=timeout)
    with smtp:
        if mail.use_tls:
            smtp.starttls(context=context)
        if mail.username:
            smtp.login(mail.username, mail.password or "")
        smtp.send_message(message)


def _write(folder: str, message: email.message.EmailMessage) -> None:
    """Write the message to ``folder`` as ``<Message-ID>.eml``, whole or not at all (a message
    written again replaces the first: one file per ending)."""
    os.makedirs(folder, exist_ok=True)
    name = str(message["Message-ID"]).strip("<>").replace("/", "_") + ".eml"
    fd, temporary = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(message.as_bytes())
    os.replace(temporary, os.path.join(folder, name))
