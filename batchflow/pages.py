"""Two pages that help a person find their way: the catalogue of the jobs they may start, and a
job's per-id outcomes (failed ids and their messages, or results) as a page instead of JSON, or
as a CSV download.

:mod:`.views` owns the routes (``/catalogue``, and ``/<job_id>/results`` handing a browser's request
here); this module builds the pages and imports no other web module but :mod:`.context`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify, render_template, request, stream_with_context, url_for

from .context import get_state, permission_subject
from .display import labels_for
from .engine import Page
from .exceptions import InvalidParams
from .files import neutralize_cell
from .i18n import gettext as _
from .i18n import shown
from .state import JobState

#: How many earlier pages' cursors a results page keeps in its "Previous" link (``back``); from
#: further on, Previous leads to the first page.
BACK_KEPT = 20


def catalogue_entries() -> list[dict[str, str]]:
    """The handlers the current user may start, by name: each one's permission hook is asked
    about the current user exactly as a start asks it, and a handler it refuses is left out."""
    return [
        {
            "name": spec.name,
            "title": shown(labels_for(spec.name, spec.handler_class.labels)["title"]),
            "description": shown(spec.handler_class.summary()),
            "url": url_for("batchflow.start", handler=spec.name),
        }
        for spec in get_state().registry.allowed(permission_subject())
    ]


def catalogue_page(as_json: bool) -> Any:
    """The catalogue as ``{"handlers": [{name, title, description, url}]}`` or as a page."""
    entries = catalogue_entries()
    if as_json:
        return jsonify({"handlers": entries})
    return render_template("batchflow/catalogue.html", handlers=entries)


def wants_page() -> bool:
    """Whether a request to a route that answers JSON comes from a browser asking for a page: it
    prefers ``text/html`` to JSON (``*/*``, as API clients send, is JSON), asks no ``format=`` and
    sends no JSON body."""
    if request.args.get("format") or request.is_json:
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _cursors(text: str) -> list[int]:
    """The ``back`` trail: earlier pages' cursors, oldest first, as dot-separated numbers."""
    parts = text.split(".") if text else []
    if not all(p.isascii() and p.isdigit() and len(p) <= 20 and int(p) < 2**64 for p in parts):
        raise InvalidParams(_("back must be the cursors of earlier pages, as this page gave them."))
    return [int(p) for p in parts][-BACK_KEPT:]


def results_page(job: dict[str, Any], which: str, page: Page, cursor: int, count: int) -> Response:
    """One page of a job's per-id ``errors`` (failed ids and their messages) or ``results``, with
    links to the previous and next pages; ``job`` is its status JSON, ``page`` what the results
    API answered for ``cursor`` and ``count``."""
    back = _cursors(request.args.get("back", ""))
    job_id = job["id"]
    rows = sorted(
        (item, value if isinstance(value, str) else json.dumps(value))
        for item, value in page.items.items()
    )
    previous = _results_url(job_id, which, count, back[-1] if back else 0, back[:-1])
    body = render_template(
        "batchflow/results.html",
        job=job,
        which=which,
        rows=rows,
        previous_url=previous if cursor else None,
        next_url=_results_url(job_id, which, count, page.cursor, [*back, cursor])
        if page.cursor
        else None,
        tab_urls={tab: _results_url(job_id, tab, count) for tab in ("errors", "results")},
        report_url=url_for("batchflow.results", job_id=job_id, format="csv"),
    )
    return Response(body, mimetype="text/html")


def _results_url(
    job_id: str, which: str, count: int, cursor: int = 0, back: list[int] | None = None
) -> str:
    query: dict[str, Any] = {"which": which, "count": count}
    if cursor:
        query["cursor"] = cursor
    if back:
        query["back"] = ".".join(map(str, back[-BACK_KEPT:]))
    return url_for("batchflow.results", job_id=job_id, **query)


def csv_report(state: JobState) -> Response:
    """Every per-id outcome of ``state``'s job as a CSV download, streamed."""
    engine = get_state().engine

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "outcome", "detail"])
        for row in engine.report_rows(state.id):
            writer.writerow([neutralize_cell(cell) for cell in row])
            if buffer.tell() > 64_000:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    name = f"{state.fields.get('handler', 'job')}-{state.id[:8]}-report.csv"
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
