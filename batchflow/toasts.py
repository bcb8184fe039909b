"""The owner's notifications on the app's pages: the endings they have not seen (``GET
/jobs/notifications``, which batchflow.js polls to show a toast on any page that loads it), marking
them seen (``POST /jobs/notifications/seen``, or opening the job's page), and
``batchflow_unseen_count()``, a template global for the app's navigation. Owner-only: each
person reads and changes only their own inbox."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, jsonify, request, url_for

from .context import current_identity, existing_identity, get_state
from .exceptions import InvalidParams, PermissionDenied, Unavailable
from .i18n import gettext as _
from .keys import valid_job_id
from .notices import TOAST_TEXTS, notice_of
from .schema import F
from .state import JobState

log = logging.getLogger("batchflow")

#: The most job ids one request may mark seen.
SEEN_MAX = 100


def _notices(owner: str) -> list[dict[str, Any]]:
    found = []
    for fields in get_state().engine.notifier.inbox.unseen(owner):
        status = JobState.from_stored(fields, []).to_dict()
        job_id = status["id"]
        links: dict[str, str | None] = {
            "page": url_for("batchflow.progress", job_id=job_id),
            "download": url_for("batchflow.download", job_id=job_id),
            "results": url_for("batchflow.results", job_id=job_id),
        }
        notice = notice_of(status, fields.get(F.SEQ, ""), links)
        found.append(notice.as_dict())
    return found


def notifications() -> Any:
    """``GET /notifications``: the person's unseen endings, newest first (none for a visitor
    who has no identity yet: asking creates none)."""
    owner = existing_identity()
    found = _notices(owner) if owner else []
    return jsonify(
        {
            "unseen": len(found),
            "notifications": found,
            "seen_url": url_for("batchflow.notifications_seen"),
            "text": {key: _(text) for key, text in TOAST_TEXTS.items()},
        }
    )


def notifications_seen() -> Any:
    """``POST /notifications/seen`` with ``{"ids": [...]}``: those endings were seen (dismissed
    toasts); ``{"all": true}``: every unseen one. Answers with the count left."""
    owner = current_identity()
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise InvalidParams(_('Send a JSON object: {"ids": ["<job id>", ...]} or {"all": true}.'))
    inbox = get_state().engine.notifier.inbox
    ids: Any = body.get("ids")
    if body.get("all") is True:
        ids = inbox.unseen_ids(owner)
    elif not isinstance(ids, list) or len(ids) > SEEN_MAX or not all(map(valid_job_id, ids)):
        raise InvalidParams(_("ids must be a list of at most %(most)s job ids.", most=SEEN_MAX))
    inbox.mark_seen(owner, ids)
    return jsonify({"unseen": inbox.count(owner)})


def seen_on_open(state: JobState) -> None:
    """The owner opened the page of their ended job: its ending is seen."""
    if not state.status.terminal:
        return
    try:
        if state.owner == current_identity():
            get_state().engine.notifier.inbox.mark_seen(state.owner, [state.id])
    except (PermissionDenied, Unavailable):
        pass  # an admin's view, or Redis blinked: the toast says it once more


def unseen_count() -> int:
    """``batchflow_unseen_count()`` in templates: how many of the person's ended jobs they have
    not seen; 0 for a visitor with no identity yet, or while Redis does not answer (the page
    still renders)."""
    owner = existing_identity()
    if not owner or g.get("batchflow_unavailable"):
        return 0  # nobody to count for, or Redis did not answer this request already
    try:
        return get_state().engine.notifier.inbox.count(owner)
    except Unavailable:
        g.batchflow_unavailable = True
        log.warning("batchflow_unseen_count(): Redis does not answer")
        return 0
