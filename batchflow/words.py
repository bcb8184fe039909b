"""The words batchflow shows, marked for translation (:func:`batchflow.i18n.N_`): a job's default
labels, the states in a word, the buttons' tips, the view's fixed texts, and the messages the Lua
scripts and the engine leave in English. They are translated where they are shown
(:mod:`batchflow.display`), in the reader's language."""

from __future__ import annotations

from .i18n import N_

#: The words for every state and action; a handler's ``labels`` override any of them. A state's
#: label (the status line, the outcome's title) starts with its :data:`STATE_WORDS` word.
DEFAULT_LABELS: dict[str, str] = {
    "title": N_("Working"),
    "pending": N_("Waiting for a worker…"),
    "running": N_("Running"),
    "pausing": N_("Pausing after the current step…"),
    "paused": N_("Paused"),
    "awaiting_confirmation": N_("Awaiting confirmation: check the preview, then confirm or cancel"),
    "stopping": N_("Stopping after the current step…"),
    "canceling": N_("Canceling: undoing the work done so far…"),
    "completed": N_("Completed"),
    "completed_with_failures": N_("Completed with failures"),
    "failed": N_("Failed"),
    "stalled": N_("Stalled: the job kept losing its worker"),
    "stopped": N_("Stopped. The work done so far was kept."),
    "canceled": N_("Canceled. The work done was undone."),
    "good": N_("done"),
    "bad": N_("failed"),
    "skipped": N_("not reached"),
    "stop": N_("Stop"),
    "cancel": N_("Cancel"),
    "pause": N_("Pause"),
    "resume": N_("Resume"),
    "retry": N_("Retry failed"),
    "continue": N_("Continue"),
    "confirm": N_("Confirm"),
    # A preview's summary; {changes}, {assessed}, {rejected} and {unchanged} are its counts.
    "preview": N_("{changes} of {assessed} would change."),
}

#: A state in a word or two: badges, the jobs list, the status filter, the CLI. Not per handler,
#: so the same state reads the same everywhere.
STATE_WORDS: dict[str, str] = {
    "pending": N_("Waiting"),
    "running": N_("Running"),
    "paused": N_("Paused"),
    "awaiting_confirmation": N_("Awaiting confirmation"),
    "stopping": N_("Stopping"),
    "canceling": N_("Canceling"),
    "completed": N_("Completed"),
    "completed_with_failures": N_("Completed with failures"),
    "failed": N_("Failed"),
    "stalled": N_("Stalled"),
    "stopped": N_("Stopped"),
    "canceled": N_("Canceled"),
}

#: What each action does, as a button's tooltip.
ACTION_TIPS: dict[str, str] = {
    "stop": N_("Stop after the current step. Work already done is kept."),
    "cancel": N_("Stop and undo every change this job has made."),
    "pause": N_("Pause after the current step. You can resume later."),
    "resume": N_("Continue where the job left off."),
    "retry": N_("Start a new job for the items that failed."),
    "continue": N_("Go on from where the job stopped, as the same job."),
    "confirm": N_("Run the job over the items the preview went through."),
}

#: A resume offered while a pause is still pending cancels that pause.
CANCEL_PAUSE_TIP = N_("Cancel the pending pause: the job keeps running.")
#: Seconds a job may wait for its first step before its view says no worker has taken it.
NO_WORKER_AFTER = 30.0
#: The status line of a job no worker has taken after :data:`NO_WORKER_AFTER` seconds.
NO_WORKER = N_(
    "No worker has taken this job yet. Check that a worker is running "
    "(celery -A worker worker) and that it uses the same Redis broker and queue as this app."
)

#: The status line of a job that needs a worker while no worker consuming its queue is seen.
NO_WORKER_SEEN = N_(
    "No worker is running for this job's queue, so it waits. Start one "
    "(celery -A worker worker) that uses the same broker and queue as this app; "
    "the job goes on where it was."
)

#: What a stopped export's outcome says about its file (the file is never trimmed to its last
#: row, so it is not offered; maintenance deletes it when the job expires).
FILE_STOPPED = N_("Stopped before the file was finished.")
FILE_STOPPED_NOTE = N_(
    "The unfinished file is not offered for download and is deleted when the job expires. "
    "Start a new export to get the whole file."
)
#: What a finished export whose file was cleaned up says instead of its download link.
FILE_DELETED = N_(
    "The file was deleted from the server (after it was downloaded, or when it expired). "
    "Start a new export to get a fresh one."
)

#: Lines under the buttons, for the actions whose effect on the work done is worth saying.
ACTION_HINTS: dict[str, str] = {
    "stop": N_("Stop keeps the work done so far."),
    "cancel": N_("Cancel undoes everything done so far."),
}

#: What a preview's buttons do, under them.
PREVIEW_HINT = N_(
    "Confirm runs the job over these items; Cancel discards the preview. "
    "Nothing has been changed yet."
)

#: The fixed words of a job's view (headings, links, the confirmation, connection trouble),
#: sent in every status JSON so that the widget has no words of its own.
UI_TEXTS: dict[str, str] = {
    "restarted": N_("This job was restarted after its worker was lost; its counts started again."),
    "activity": N_("Activity"),
    "results": N_("Results"),
    "back": N_("Back"),
    "going_back": N_("Going back in a moment…"),
    "stay": N_("Stay here"),
    "downloaded": N_("Downloaded. The file was removed from the server."),
    "confirm_yes": N_("Yes, cancel and undo"),
    "confirm_no": N_("Don't cancel"),
    "connection": N_("Connection problem. Retrying…"),
    "network": N_("Network error: the request did not reach the server. Please try again."),
    "refused": N_("The server refused the request (HTTP {code}). Please try again."),
    "close": N_("Close"),
    "close_tip": N_("Close (the job keeps running)"),
    "keeps_running": N_("The job keeps running if you close this window."),
    "open_page": N_("Open the job page"),
    "new_export": N_("Start a new export"),
    "see_failed": N_("See the failed ids"),
    "preview_sample": N_("For example"),
    "preview_errors": N_("Would be rejected"),
    "rejected": N_("Download the rejected rows to fix (CSV)"),
    "notify_me": N_("Notify me when done"),
    "notify_on": N_("You will get a notification when the job ends."),
    "notify_blocked": N_("This browser blocks notifications from this site."),
}


#: Messages that only echo a signal; the status line says the same while that state lasts.
SIGNAL_ECHOES: dict[str, str] = {
    N_("Stop requested"): "stopping",
    N_("Pause requested"): "pausing",
    N_("Paused"): "paused",
}
#: The other messages the Lua scripts and the engine leave in English (see scripts.py, engine.py):
#: translated where they are shown, like every kept text.
ENGINE_MESSAGES = (
    N_("Discarded without running: nothing was changed"),
    N_("Cancel requested: undoing the work done so far"),
    N_("Resumed"),
    N_("Continued from where it stopped"),
    N_("Confirmed: running"),
)

#: A start refused because the owner's active jobs fill their limit (a handler's own limit).
LIMIT_REACHED = N_(
    "You already have %(count)s active job(s), the most one person may run at once "
    "(%(limit)s). Wait for one to finish, or stop one, then try again."
)
HANDLER_LIMIT_REACHED = N_(
    "You already have %(count)s active %(handler)s job(s), the most one person may run at "
    "once (%(limit)s). Wait for one to finish, or stop one, then try again."
)
