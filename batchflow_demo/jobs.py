"""The demo's jobs (all but the import: see :mod:`.importer`), on the demo's own registry,
and the SQLite data they work on.

- ``export-contacts``: the contacts report (:mod:`batchflow_demo.contacts`), a FileJob. Each row
  costs a pretend ``BATCHFLOW_DEMO_ROW_COST`` seconds (0.15 ms), standing in for the database read
  a real export makes: the generated rows alone cost about 3 µs each, so 100,000 of them would be
  written in about a second, too fast to watch or to stop.
- ``archive-posts``: an ItemsJob over the posts table. Every 13th post is locked and fails with a
  message; Cancel undoes, newest first, exactly the archiving this job did.
- ``rebuild-index``: a one-shot TaskJob that rebuilds a word index of the posts, reporting each
  post good or bad as it goes, and honouring Stop.

The archive and the index cost a pretend ``BATCHFLOW_DEMO_ITEM_DELAY`` seconds (2 ms) per post.
With the defaults each job lasts 10 to 20 seconds: long enough to watch it and to try its buttons.
The pretend costs are the only sleeps; the engine's own cost per step is what it is.

Handlers run in the worker inside the Flask app's context, so they read the demo's settings from
``current_app.config`` (``BATCHFLOW_DEMO_*``, see :func:`batchflow_demo.create_app`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from flask import current_app

from batchflow import CallableSource, ItemsJob, Job, Registry, Source, TaskJob, UserError

from .contacts import ContactsReport, StepResult
from .lang import N_

#: The demo's handlers. The demo app passes it to ``BatchFlow(registry=...)``; the global
#: ``batchflow.registry`` stays untouched.
registry = Registry()

#: Every post whose id is a multiple of this is locked, so archiving it fails.
LOCKED_EVERY = 13
#: Every post whose id is a multiple of this has no text, so the index skips it.
EMPTY_EVERY = 97

_TOPICS = (
    "release notes",
    "team offsite",
    "quarterly numbers",
    "hiring update",
    "customer story",
    "security review",
    "roadmap",
    "office move",
    "conference recap",
    "onboarding guide",
)
_WORDS = (
    "batch queue worker redis progress export archive index report step commit lease signal "
    "undo cancel stop pause resume retry file download browser server event stream owner"
).split()


class PostLocked(UserError):
    """A post someone else is editing: archiving it fails, the job goes on (the message is for
    the person, so it is a UserError: shown as written)."""


class NoSuchPost(UserError, LookupError):
    """An id that is not a post: it fails, the job goes on (shown as written)."""


def post_text(post_id: int) -> tuple[str, str]:
    """Post ``post_id``'s title and body, always the same."""
    title = f"Post {post_id}: {_TOPICS[post_id % len(_TOPICS)]}"
    if post_id % EMPTY_EVERY == 0:
        return title, ""
    words = [_WORDS[(post_id * (i + 3) + i * i) % len(_WORDS)] for i in range(12)]
    return title, " ".join(words).capitalize() + "."


class Posts:
    """The demo's posts, in an SQLite file: created and filled on first use, nothing to set up.

    Safe to share between the web process and worker processes (SQLite's own locking, WAL).

    :param path: the database file.
    :param count: how many posts to create when the file is new.
    """

    _ready: ClassVar[set[str]] = set()

    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.count = count

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection (autocommit; ``BEGIN`` for a transaction), closed afterwards. The schema
        and the posts are created first if the file is new."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            if self.path not in self._ready:
                conn.execute("PRAGMA journal_mode=WAL")  # readers do not wait for writers
                self._create(conn)
                self._ready.add(self.path)
            yield conn
        finally:
            conn.close()

    def _create(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE: the web process and a worker may both get here first on a fresh file.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
                " body TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0, archived_by TEXT)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS search_terms (term TEXT NOT NULL,"
                " post_id INTEGER NOT NULL, PRIMARY KEY (term, post_id)) WITHOUT ROWID"
            )
            if conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0] == 0:
                conn.executemany(
                    "INSERT INTO posts (id, title, body) VALUES (?, ?, ?)",
                    ((i, *post_text(i)) for i in range(1, self.count + 1)),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def ids(self) -> list[int]:
        """Every post's id, in order."""
        with self.connection() as conn:
            return [post_id for (post_id,) in conn.execute("SELECT id FROM posts ORDER BY id")]

    def stats(self) -> dict[str, int]:
        """How many posts there are, how many are archived, how many words are indexed."""
        with self.connection() as conn:
            total, archived = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(archived), 0) FROM posts"
            ).fetchone()
            terms = conn.execute("SELECT COUNT(DISTINCT term) FROM search_terms").fetchone()[0]
        return {"total": total, "archived": archived, "terms": terms}

    @staticmethod
    def archive(conn: sqlite3.Connection, post_id: int, job_id: str) -> str:
        """Archive one post for ``job_id``; says whether it was archived now or already.

        Running it again for the same job (a step retried after a lost worker) changes nothing.

        :raises PostLocked: the post is locked (every 13th).
        :raises NoSuchPost: no such post.
        """
        row = conn.execute("SELECT archived, archived_by FROM posts WHERE id = ?", (post_id,))
        found = row.fetchone()
        if found is None:
            raise NoSuchPost(f"Post {post_id} does not exist.")
        if post_id % LOCKED_EVERY == 0:
            raise PostLocked(f"Post {post_id} is locked by another editor; it was left as it was.")
        archived, archived_by = found
        if archived:
            return "archived" if archived_by == job_id else "already archived"
        conn.execute(
            "UPDATE posts SET archived = 1, archived_by = ? WHERE id = ? AND archived = 0",
            (job_id, post_id),
        )
        return "archived"

    @staticmethod
    def unarchive(conn: sqlite3.Connection, post_id: int, job_id: str) -> None:
        """Undo :meth:`archive` for ``job_id``; posts archived by anyone else stay archived."""
        conn.execute(
            "UPDATE posts SET archived = 0, archived_by = NULL WHERE id = ? AND archived_by = ?",
            (post_id, job_id),
        )


def posts() -> Posts:
    """The current app's posts (``BATCHFLOW_DEMO_DATA``/posts.sqlite3)."""
    config = current_app.config
    path = os.path.join(config["BATCHFLOW_DEMO_DATA"], "posts.sqlite3")
    return Posts(path, int(config["BATCHFLOW_DEMO_POSTS"]))


def pretend_work(setting: str, units: int = 1) -> None:
    """The demo's pretend work: ``units`` times the seconds ``setting`` says, so that progress is
    there to watch (the page says so too)."""
    seconds = float(current_app.config[setting]) * units
    if seconds > 0:
        time.sleep(seconds)


def _pause() -> None:
    """The pretend work of one post (``BATCHFLOW_DEMO_ITEM_DELAY``)."""
    pretend_work("BATCHFLOW_DEMO_ITEM_DELAY")


@registry.register("export-contacts")
class ExportContacts(ContactsReport):
    """The example contacts report, as long as the demo's ``--contacts`` says."""

    labels: ClassVar[dict[str, str]] = {
        **ContactsReport.labels,
        "title": N_("Exporting contacts"),
    }

    def count_units_to_process(self, job: Job) -> int:
        return int(current_app.config["BATCHFLOW_DEMO_CONTACTS"])

    def get_csv_data(self, job: Job, offset: int, limit: int) -> list[list[Any]]:
        rows = super().get_csv_data(job, offset, limit)
        # What reading these rows from a database would cost (BATCHFLOW_DEMO_ROW_COST per row).
        pretend_work("BATCHFLOW_DEMO_ROW_COST", len(rows))
        return rows


@registry.register("archive-posts")
class ArchivePosts(ItemsJob):
    """Archives every post. Locked posts fail one by one; Cancel unarchives what this job did."""

    labels: ClassVar[dict[str, str]] = {
        "title": N_("Archiving posts"),
        "good": N_("archived"),
        "bad": N_("could not archive"),
    }
    # Cancel (undo) is offered; offering Stop as well would leave the user to guess the difference.
    can_stop = False
    _db: sqlite3.Connection  # this step's connection (a handler object lives for one step)

    def items(self, job: Job) -> list[int]:
        # Produced in the worker, so the page need not post 5,000 ids. Ids posted with the
        # start request (a selection) are used instead when there are any.
        return posts().ids()

    # One database connection per step, closed when the step ends.
    def continue_job(self, job: Job, batch_size: int) -> StepResult:
        with posts().connection() as self._db:
            return super().continue_job(job, batch_size)

    def undo_job(self, job: Job, batch_size: int) -> StepResult:
        with posts().connection() as self._db:
            return super().undo_job(job, batch_size)

    def change(self, item_id: str, job: Job) -> Any:
        outcome = Posts.archive(self._db, int(item_id), job.id)
        _pause()
        return None if outcome == "archived" else outcome

    def undo(self, item_id: str, job: Job) -> None:
        Posts.unarchive(self._db, int(item_id), job.id)
        _pause()


@registry.register("restore-posts")
class RestorePosts(ItemsJob):
    """Restores the archived posts, after a preview: it first goes through them and shows how
    many it would restore, with a few titles; nothing changes until you confirm."""

    labels: ClassVar[dict[str, str]] = {
        "title": N_("Restoring archived posts"),
        "good": N_("restored"),
        "preview": N_("This will restore {changes} archived posts."),
    }
    preview = True
    can_stop = False

    def source(self, job: Job) -> Source:
        # The archived posts, walked by id: a post archived after the preview is not restored.
        def walk(after: Any) -> Iterator[tuple[int, tuple[int, str], int]]:
            with posts().connection() as conn:
                rows = conn.execute(
                    "SELECT id, title FROM posts WHERE archived = 1 AND id > ? ORDER BY id",
                    (after or 0,),
                )
                for post_id, title in rows:
                    yield post_id, (post_id, title), post_id

        def archived() -> int:
            return posts().stats()["archived"]

        return CallableSource(walk, total=archived)

    def assess(self, item: tuple[int, str], job: Job) -> str:
        _pause()
        return item[1]  # the sample shows the first posts' titles

    def change(self, item: tuple[int, str], job: Job) -> None:
        with posts().connection() as conn:
            conn.execute(
                "UPDATE posts SET archived = 0, archived_by = NULL WHERE id = ?", (item[0],)
            )
        _pause()


@registry.register("rebuild-index")
class RebuildSearchIndex(TaskJob):
    """Rebuilds the word index of every post in one call; posts without text are counted bad."""

    labels: ClassVar[dict[str, str]] = {
        "title": N_("Rebuilding the search index"),
        "good": N_("posts indexed"),
        "bad": N_("posts without text"),
    }

    def run(self, job: Job) -> StepResult:
        with posts().connection() as conn:
            return self._rebuild(job, conn)

    def _rebuild(self, job: Job, conn: sqlite3.Connection) -> StepResult:
        rows = conn.execute("SELECT id, title, body FROM posts ORDER BY id").fetchall()
        job.set_total(len(rows))
        # If the worker dies this runs again from the start: clearing first makes that harmless.
        conn.execute("DELETE FROM search_terms")
        conn.execute("BEGIN")
        try:
            for done, (post_id, title, body) in enumerate(rows):
                if job.stop_requested():
                    job.add_message(f"Stopped after {done:,} posts; the index is incomplete.")
                    break
                if not body.strip():
                    job.record_error(str(post_id), f"Post {post_id} has no text to index.")
                    job.bad()
                else:
                    words = set(re.findall(r"[a-z]+", f"{title} {body}".lower()))
                    conn.executemany(
                        "INSERT OR IGNORE INTO search_terms (term, post_id) VALUES (?, ?)",
                        ((word, post_id) for word in words),
                    )
                    job.good()
                if done % 250 == 249:
                    conn.execute("COMMIT")
                    conn.execute("BEGIN")
                _pause()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        terms = conn.execute("SELECT COUNT(DISTINCT term) FROM search_terms").fetchone()[0]
        job.set_results(
            {
                "Posts indexed": job.good_count,
                "Posts without text": job.bad_count,
                "Distinct words": terms,
            }
        )
        if not job.stop_requested():
            job.add_message(f"Indexed {job.good_count:,} posts: {terms} distinct words.")
        return None
