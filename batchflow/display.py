"""What a job shows a person: its labels (the words for every state and action).

One source for every page, the widget (through the status JSON) and the command line.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_LABELS: dict[str, str] = {
    "title": "Working",
    "pending": "Waiting for a worker…",
    "running": "In progress",
    "paused": "Paused",
    "stopping": "Stopping after the current step…",
    "canceling": "Canceling: undoing the work done so far…",
    "completed": "Done",
    "completed_with_failures": "Done, with some failures",
    "failed": "Failed",
    "stalled": "Stopped: the job kept losing its worker",
    "stopped": "Stopped. The work done so far was kept.",
    "canceled": "Canceled. The work done was undone.",
    "good": "done",
    "bad": "failed",
    "skipped": "not reached",
    "stop": "Stop",
    "cancel": "Cancel",
    "pause": "Pause",
    "resume": "Resume",
    "retry": "Retry failed",
}


def labels_for(handler_name: str, handler_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a job shows: the handler's own over the defaults; the title defaults to the
    handler's name made readable ("contacts-report" -> "Contacts report")."""
    title = handler_name.replace("-", " ").replace("_", " ").strip().capitalize() or "Job"
    return {**DEFAULT_LABELS, "title": title, **handler_labels}
