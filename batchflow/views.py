"""The blueprint: start jobs, the progress page, status JSON, Server-Sent Events, signals,
downloads and per-id reports. The only module that reads ``flask.request``.

Security: a request names a registered handler, never a class; every job has an owner and a job
that is not yours is the same 404 as an unknown one; state changes only on POST, CSRF-checked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import HTTPException

from .context import current_identity, get_state, is_admin, nobody_works, permission_subject
from .display import labels_for, register_template_filters
from .exceptions import (
    BatchflowError,
    InvalidParams,
    JobNotFound,
    LimitReached,
    PermissionDenied,
    Unavailable,
    UnknownHandler,
)
from .i18n import gettext as _
from .i18n import shown
from .importing import protect_csrf, rejected_rows, start_import, takes_upload, upload_form
from .imports import ImportJob
from .intake import (
    limit_body,
    read_start_request,
    safe_redirect,
    start_fields,
    start_lanes,
    validate_form,
)
from .pages import catalogue_page, csv_report, results_page, wants_page
from .registry import HandlerSpec
from .schema import F, Status
from .state import JobState
from .toasts import notifications, notifications_seen, seen_on_open, unseen_count

log = logging.getLogger("batchflow")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _resource_dir(name: str) -> str:
    """``templates``/``static`` inside the installed package, or beside it in a source checkout."""
    inside = os.path.join(_HERE, name)
    return inside if os.path.isdir(inside) else os.path.join(os.path.dirname(_HERE), name)


TEMPLATES = _resource_dir("templates")
STATIC = _resource_dir("static")
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: What a job's owner may ask of it by POST (each where it applies: see JobState.actions).
ACTIONS = "stop, cancel, pause, resume, continue, confirm, cleanup, retry"
#: The jobs list's last page number, and the most per-id outcomes one results page asks for.
MAX_PAGE = 1_000_000
MAX_RESULTS_COUNT = 1000
_API_ENDPOINTS = {
    "batchflow.status",
    "batchflow.events",
    "batchflow.results",
    "batchflow.notifications",
    "batchflow.notifications_seen",
}


def wants_json() -> bool:
    if request.args.get("format") == "json" or request.is_json:
        return True
    if request.endpoint in _API_ENDPOINTS:  # machine routes answer errors in JSON, always
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _visible(job_id: str) -> JobState:
    """The job, if the current user may see it; otherwise the same 404 as an unknown id."""
    user = current_identity()
    state = get_state().engine.state(job_id)
    if state.owner != user and not is_admin(user):
        raise JobNotFound(job_id)
    return state


def _viewer_is_admin() -> bool:
    """Whether the current request's user is an admin (asked once per request); outside a
    request (a stream that lost its context), never."""
    if not has_request_context():
        return False
    if "batchflow_admin" not in g:
        try:
            g.batchflow_admin = is_admin(current_identity())
        except PermissionDenied:
            g.batchflow_admin = False
    return bool(g.batchflow_admin)


def status_json(
    state: JobState, *, admin: bool | None = None, page: bool = False
) -> dict[str, Any]:
    """The status JSON of the HTTP API: the job's state plus the URLs a client needs.

    ``error_detail`` (the real messages behind the references in ``error`` and the messages) is
    there for an admin only; ``admin`` defaults to whether the current request's user is one.
    ``page``: for a page's first paint, which reads whether a worker is seen if this process's
    answer is old (a status poll takes the answer on hand: one Redis round trip).
    """
    data = state.to_dict(no_worker=nobody_works(state, wait=page))
    if admin is None:
        admin = _viewer_is_admin()
    if admin:
        data["error_detail"] = state.fields.get("error_detail") or None
    job_id = state.id
    data["url"] = url_for("batchflow.progress", job_id=job_id)
    data["status_url"] = url_for("batchflow.status", job_id=job_id)
    data["events_url"] = url_for("batchflow.events", job_id=job_id)
    data["action_urls"] = {
        name: url_for("batchflow.action", job_id=job_id, action=name)
        for name in ACTIONS.split(", ")
    }
    data["download_url"] = (
        url_for("batchflow.download", job_id=job_id) if state.file_ready else None
    )
    # Per-id results and errors exist only for item jobs; a one-shot job's results are inline.
    data["results_url"] = (
        url_for("batchflow.results", job_id=job_id) if state.kind == "items" else None
    )
    data["rejected_url"] = (
        url_for("batchflow.results", job_id=job_id, which="errors", format="csv")
        if F.UPLOAD_NAME in state.fields
        else None
    )
    return data


def _job_response(job_id: str, code: int = 202) -> Response:
    """Answer a request that started a job: 303 to its page, or ``code`` with its URLs (202 for
    a new job, 200 for an identical active job that a deduplicating handler answered with)."""
    page = url_for("batchflow.progress", job_id=job_id)
    if not wants_json():
        return redirect(page, code=303)  # type: ignore[return-value]
    body = {
        "id": job_id,
        "url": page,
        "status_url": url_for("batchflow.status", job_id=job_id),
        "events_url": url_for("batchflow.events", job_id=job_id),
    }
    response = jsonify(body)
    response.status_code = code
    response.headers["Location"] = page
    return response


#: The blueprint ``BatchFlow.init_app`` registers (at ``BatchFlow(url_prefix=...)``). One object
#: serves every app it is registered on: a view reads its app's options from :func:`get_state`.
blueprint = Blueprint(
    "batchflow",
    __name__,
    template_folder=TEMPLATES,
    static_folder=STATIC,
    static_url_path="/static",
)
# The pages format every number, time and word through display.py, as the status JSON does, and
# say every other word through _bf (batchflow's catalogue, in the reader's language).
register_template_filters(blueprint)


@blueprint.app_context_processor
def template_globals() -> dict[str, Any]:
    # Any page of the app may use the widget; it finds the routes through this prefix.
    # url_for includes the script root, so this holds when the app is mounted under a path.
    return {
        "batchflow_prefix": url_for("batchflow.jobs").rstrip("/"),
        "batchflow_unseen_count": unseen_count,
    }


@blueprint.before_request
def check_csrf() -> None:
    if request.method not in _UNSAFE:
        return
    handler = (request.view_args or {}).get("handler", "")
    if request.endpoint == "batchflow.start" and takes_upload(handler):
        return  # an upload: its route limits the body and checks the token in it (importing.py)
    limit_body(get_state().settings.max_body)
    protect_csrf()


@blueprint.get("/csrf-token")
def csrf_token() -> Any:
    """A CSRF token for batchflow.js on a page that carries none. Safe to hand out: without CORS
    headers another site's page cannot read this answer, and the token is bound to the session."""
    from flask_wtf.csrf import generate_csrf

    protected = get_state().csrf and current_app.extensions.get("csrf")
    return jsonify({"csrf_token": generate_csrf() if protected else None})


@blueprint.after_request
def security_headers(response: Response) -> Response:
    """Defence in depth on every response batchflow serves, unless the app already set a header:
    scripts and styles only from this site (the pages have no inline script), no framing by
    another site, no MIME sniffing, no referrer to other sites; and nothing about a job (pages,
    status, streams, downloads, reports) kept in a cache."""
    headers = response.headers
    policy = get_state().settings.content_security_policy
    if policy:
        headers.setdefault("Content-Security-Policy", policy)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    if request.endpoint != "batchflow.static":
        headers["Cache-Control"] = "no-store"
    return response


@blueprint.errorhandler(BatchflowError)
def batchflow_error(exc: BatchflowError) -> Any:
    code = exc.http_status
    message = shown(str(exc))  # in the reader's language (most are already, from where raised)
    if isinstance(exc, (UnknownHandler, Unavailable)):
        # The end user learns only what is wrong for them; the cause and fix are the developer's.
        log.warning("%s (requested at %s)", exc.developer_message, request.path)
        if current_app.debug:
            message = exc.developer_message
    body: dict[str, Any] = {"error": message}
    if isinstance(exc, InvalidParams) and exc.errors:
        body["errors"] = exc.errors
    body.update(exc.details)
    if wants_json():
        return jsonify(body), code, exc.headers
    page = render_template("batchflow/error.html", error=message, code=code)
    return page, code, exc.headers


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    message = exc.description or exc.name
    if wants_json():
        return jsonify({"error": message}), code
    return render_template("batchflow/error.html", error=message, code=code), code


@blueprint.get("/")
def jobs() -> Any:
    user = current_identity()
    admin = is_admin(user)
    status_filter = request.args.get("status") or None
    if status_filter and status_filter not in {s.value for s in Status}:
        raise InvalidParams(_("Unknown status %(status)r.", status=status_filter))
    page = max(1, request.args.get("page", 1, type=int) or 1)
    if page > MAX_PAGE:
        raise InvalidParams(_("page must be at most %(most)s.", most=MAX_PAGE))
    per_page = max(1, min(100, request.args.get("per_page", 25, type=int) or 25))
    states = get_state().engine.jobs(
        None if admin else user,
        offset=(page - 1) * per_page,
        limit=per_page + 1,
        status=status_filter,
    )
    has_next = len(states) > per_page
    listed = [status_json(s) for s in states[:per_page]]
    if wants_json():
        return jsonify({"jobs": listed, "page": page, "has_next": has_next})
    return render_template(
        "batchflow/jobs.html",
        jobs=listed,
        status_filter=status_filter,
        statuses=[s.value for s in Status],
        page=page,
        has_next=has_next,
        is_admin=admin,
    )


@blueprint.get("/catalogue")
def catalogue() -> Any:
    """The jobs the current user may start (see :mod:`.pages`)."""
    return catalogue_page(as_json=wants_json())


def _require_permission(handler: str) -> HandlerSpec:
    """The handler, if its permission hook allows the current user, who will own the job about
    to be created (a fresh start or a retry: every route that creates a job asks this)."""
    spec = get_state().registry.get(handler)
    if not spec.allows(permission_subject()):
        raise PermissionDenied(_("You are not allowed to start this job."))
    return spec


@blueprint.route("/start/<handler>", methods=["GET", "POST"])
def start(handler: str) -> Any:
    spec = _require_permission(handler)
    user = current_identity()
    upload = issubclass(spec.handler_class, ImportJob)
    form_class = upload_form(spec) if upload else spec.handler_class.params_form
    labels = labels_for(spec.name, spec.handler_class.labels)
    if request.method == "GET":
        return _start_page(handler, labels, _blank_form(form_class))
    try:
        if upload:
            started = start_import(spec, user)
        else:
            params, ids, redirect_url = read_start_request()
            if form_class is not None:
                params = validate_form(form_class, params)
            started = get_state().engine.submit(
                handler,
                owner=user,
                params=params,
                ids=ids,
                redirect_url=safe_redirect(redirect_url),
                extra=start_fields(),
                lanes=start_lanes(),
            )
    except InvalidParams as exc:
        if form_class is None or wants_json():
            raise
        form = form_class()  # bound to the posted form, so it re-renders with its CSRF token
        form.validate()
        return _start_page(handler, labels, form, error=str(exc)), 400
    return _job_response(started.job_id, 202 if started.created else 200)


def _start_page(handler: str, labels: dict[str, str], form: Any, **context: Any) -> str:
    """The start page of ``handler``: its parameters form (or a Start button)."""
    asks = get_state().engine.registry.get(handler).handler_class.notify_email is None
    return render_template(
        "batchflow/start.html",
        handler_name=handler,
        labels={key: shown(text) for key, text in labels.items()},
        form=form,
        action_url=url_for("batchflow.start", handler=handler),
        offer_email=asks and get_state().settings.notify_email,
        **context,
    )


blueprint.add_url_rule("/notifications", view_func=notifications)
blueprint.add_url_rule("/notifications/seen", view_func=notifications_seen, methods=["POST"])


@blueprint.get("/<job_id>")
def progress(job_id: str) -> Any:
    state = _visible(job_id)
    seen_on_open(state)
    return render_template("batchflow/progress.html", job=status_json(state, page=True))


@blueprint.get("/<job_id>/status")
def status(job_id: str) -> Any:
    response = jsonify(status_json(_visible(job_id)))
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/<job_id>/events")
def events(job_id: str) -> Response:
    """The job's status as Server-Sent Events until it ends, for at most ``stream_seconds``
    (the browser's EventSource then opens a new stream by itself). Each stream holds a server
    thread: one identity holds at most ``streams_per_user`` at once, across web processes
    (beyond that, 429 before the stream starts)."""
    user = current_identity()
    _visible(job_id)
    settings, engine = get_state().settings, get_state().engine
    token = engine.streams.acquire(user, settings.streams_per_user)
    if token is None:
        raise LimitReached(
            _(
                "You have %(count)s live progress streams open already. Close a progress page, "
                "or check this job's status URL instead.",
                count=settings.streams_per_user,
            ),
            retry_after=math.ceil(engine.streams.keepalive),  # a closed page: its next keep-alive
            details={"status_url": url_for("batchflow.status", job_id=job_id)},
        )
    # Wake up at least this often, to keep the stream alive and to end it on time.
    tick = min(engine.streams.keepalive, settings.stream_seconds)
    follow = engine.follow(job_id, keepalive=tick)

    def stream() -> Iterator[str]:
        deadline = time.monotonic() + settings.stream_seconds
        refresh_at = time.monotonic() + tick
        try:
            yield "retry: 2000\n\n"
            for state in follow:
                yield (
                    ": keep-alive\n\n"
                    if state is None
                    else f"data: {json.dumps(status_json(state))}\n\n"
                )
                now = time.monotonic()
                if now >= deadline:
                    return
                if now >= refresh_at:
                    if not engine.streams.refresh(user, token):
                        return  # the slot lapsed (Redis stalled): the client opens a new stream
                    refresh_at = now + tick
        finally:
            follow.close()
            engine.streams.release(user, token)

    response = Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    # A stream closed before its first chunk never runs its generator's finally.
    response.call_on_close(lambda: engine.streams.release(user, token))
    return response


@blueprint.post(f"/<job_id>/<any({ACTIONS}):action>")
def action(job_id: str, action: str) -> Any:
    state = _visible(job_id)
    engine = get_state().engine
    if action == "retry":
        _require_permission(state.fields.get(F.HANDLER, ""))  # the hook asks about the new owner
        started = engine.retry(job_id, owner=current_identity())
        return _job_response(started.job_id, 202 if started.created else 200)
    if action == "cleanup":
        engine.request_cleanup(job_id)
        new_state = engine.state(job_id)
    else:
        new_state = engine.signal(state.id, action)
    if wants_json():
        return jsonify(status_json(new_state)), 202
    return redirect(url_for("batchflow.progress", job_id=job_id), code=303)


@blueprint.get("/<job_id>/download")
def download(job_id: str) -> Any:
    state = _visible(job_id)
    if not state.file_ready:
        raise JobNotFound(job_id)
    root = os.path.realpath(get_state().settings.files_dir)
    path = os.path.realpath(state.fields["file_path"])
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        raise JobNotFound(job_id)
    return send_file(
        path,
        mimetype=state.fields.get("file_type") or "application/octet-stream",
        as_attachment=True,
        download_name=state.fields.get("file_name") or os.path.basename(path),
        max_age=0,
    )


@blueprint.get("/<job_id>/results")
def results(job_id: str) -> Any:
    state = _visible(job_id)
    which = request.args.get("which", "results")
    if request.args.get("format") == "csv":
        if which == "errors" and F.UPLOAD_NAME in state.fields:
            return rejected_rows(state)
        return csv_report(state)
    if which not in ("results", "errors"):
        raise InvalidParams(_("which must be 'results' or 'errors'."))
    cursor = request.args.get("cursor", 0, type=int) or 0
    count = request.args.get("count", 100, type=int) or 100
    if not 0 <= cursor < 2**64 or count < 1:
        raise InvalidParams(_("cursor must be a cursor this route gave, and count >= 1."))
    count = min(count, MAX_RESULTS_COUNT)
    page = get_state().engine.results(job_id, which, cursor, count)
    if wants_page():  # a browser: the same page as a table, with links (see pages.py)
        return results_page(status_json(state), which, page, cursor, count)
    return jsonify({"which": which, "items": page.items, "cursor": page.cursor})


def _blank_form(form_class: type | None) -> Any:
    """The form for a start page: the handler's own, or one with just the CSRF token."""
    from flask_wtf import FlaskForm

    return (form_class or FlaskForm)()
