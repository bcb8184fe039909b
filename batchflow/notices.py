"""A job's ending as a notification: the same few lines for the toast, the email, the webhook's
reader and the ``on_notify`` hook, made from the status JSON's own words (``text``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .i18n import N_
from .i18n import gettext as _

#: What the notification's link does, by what the ending left to look at.
DOWNLOAD, SEE_WHY, OPEN = N_("Download"), N_("See why"), N_("Open")
#: The fixed words of the toasts that batchflow.js shows on any page of the app.
TOAST_TEXTS = {"region": N_("Job notifications"), "dismiss": N_("Dismiss")}


@dataclasses.dataclass(frozen=True)
class Notice:
    """One ending of one job, told to its owner.

    ``headline`` is the outcome's title ("Completed with failures"), ``summary`` what it counted
    ("409 archived, 11 failed."); ``action`` the link's text and ``action_url`` where it goes
    (the download, the failed ids, or the job's page ``url``). ``key`` is the same for every
    delivery of this ending (the webhook's idempotency key, the email's Message-ID) and differs
    for a later ending of the same job (after Continue). ``status`` is the full status JSON.
    """

    job_id: str
    owner: str
    handler: str
    state: str
    title: str
    headline: str
    summary: str
    message: str
    action: str
    action_url: str
    url: str
    key: str
    ended_at: float | None
    status: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The notice as ``GET /jobs/notifications`` lists it (without the status JSON)."""
        data = dataclasses.asdict(self)
        del data["status"]
        return data


def notice_of(status: dict[str, Any], seq: str, links: dict[str, str | None]) -> Notice:
    """The notice of an ended job: ``status`` is its status JSON (``JobState.to_dict()``),
    ``seq`` its ending's step number, ``links`` the URLs of its ``page``, ``download`` and
    ``results`` (absolute in an email, as the app's routes give them on a page)."""
    text = status["text"]
    page = links["page"] or ""
    action, action_url = OPEN, page
    if status.get("file_ready") and links.get("download"):
        action, action_url = DOWNLOAD, links["download"] or page
    elif status.get("kind") == "items" and status.get("bad") and links.get("results"):
        action, action_url = SEE_WHY, links["results"] or page
    elif status.get("state") in ("failed", "stalled"):
        action = SEE_WHY
    return Notice(
        job_id=status["id"],
        owner=status["owner"],
        handler=status["handler"],
        state=status["state"],
        title=text["title"],
        headline=text["outcome_title"] or text["badge"],
        summary=text["outcome"],
        message=text["message"] or status.get("error") or "",
        action=_(action),
        action_url=action_url,
        url=page,
        key=f"{status['id']}.{seq}",
        ended_at=status.get("finished_at") or status.get("updated_at"),
        status=status,
    )
