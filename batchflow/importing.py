"""Import jobs on the web: the start form with its file field, the upload received and checked
before anything is enqueued, and the rejected rows handed back as the CSV to fix.

The upload is streamed into the new job's own folder under ``BATCHFLOW_FILES_DIR`` as it
arrives (:func:`~batchflow.uploads.receive_upload`), so the body is read once, here: the
blueprint's CSRF check and body limit skip this route (the token travels in the same body, and
``BATCHFLOW_UPLOAD_MAX_BYTES`` is the limit), and it checks the token itself once the body is in.
Anything refused leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from flask import Response, current_app, g, request, stream_with_context

from .context import get_state
from .csvsource import rejected_rows_csv
from .engine import Started
from .exceptions import InvalidParams, JobNotFound
from .i18n import gettext as _
from .i18n import shown
from .imports import ImportJob, upload_path
from .intake import read_start_request, safe_redirect, start_fields, validate_form
from .keys import new_job_id
from .registry import HandlerSpec
from .schema import F
from .state import JobState
from .uploads import receive_upload
from .xlsx import xlsx_to_csv

#: An upload with one of these suffixes is a workbook, converted to CSV (the ``xlsx`` extra).
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")


def takes_upload(handler: str) -> bool:
    """Whether the handler registered as ``handler`` is an import (its start receives a file)."""
    spec = get_state().registry.find(handler)
    return spec is not None and issubclass(spec.handler_class, ImportJob)


def protect_csrf() -> None:
    """Check the request's CSRF token, as the blueprint does for every unsafe request, when the
    app has Flask-WTF's CSRFProtect and batchflow checks tokens (``BatchFlow(csrf=True)``)."""
    csrf = current_app.extensions.get("csrf")
    enabled = current_app.config.get("WTF_CSRF_ENABLED", True)
    if get_state().csrf and csrf and enabled and not g.get("csrf_valid"):
        csrf.protect()


def upload_form(spec: HandlerSpec) -> type:
    """The start form of an import: its handler's parameters form (or one with just the CSRF
    token) with a file field, ``file``, saying which columns the file needs."""
    from flask_wtf import FlaskForm
    from flask_wtf.file import FileField

    base = spec.handler_class.params_form or FlaskForm
    handler_class: type[ImportJob] = spec.handler_class  # type: ignore[assignment]
    columns, optional = ", ".join(handler_class.columns), handler_class.optional_columns
    more = ", ".join(optional or ())
    if columns and optional:
        help_text = _(
            "A CSV file (UTF-8) or an Excel workbook (.xlsx) with the columns %(columns)s "
            "(and, if you like, %(more)s).",
            columns=columns,
            more=more,
        )
    elif columns:
        help_text = _(
            "A CSV file (UTF-8) or an Excel workbook (.xlsx) with the columns %(columns)s.",
            columns=columns,
        )
    else:
        help_text = _("A CSV file (UTF-8) or an Excel workbook (.xlsx).")
    field = FileField(
        _("File"),
        description=help_text,
        render_kw={"accept": ".csv,.xlsx,text/csv", "required": True},
    )
    return type(f"{base.__name__}WithFile", (base,), {"file": field})


def start_import(spec: HandlerSpec, owner: str) -> Started:
    """Receive the upload of a start request for the import ``spec`` into a new job's folder,
    check it, and start the job over it.

    :raises InvalidParams: no file, a file that is not a CSV this job takes, bad parameters.
    :raises RequestEntityTooLarge: the body is over ``BATCHFLOW_UPLOAD_MAX_BYTES``.
    """
    state = get_state()
    files_dir = state.settings.files_dir
    job_id = new_job_id()
    folder = os.path.dirname(upload_path(files_dir, job_id))
    try:
        upload = receive_upload(request, folder, max_bytes=state.settings.upload_max_bytes)
        protect_csrf()
        params, ids, redirect_url = read_start_request()
        if ids is not None:
            raise InvalidParams(_("An import takes its rows from the file: send no ids."))
        target = upload_path(files_dir, job_id)
        if upload.path.endswith(WORKBOOK_SUFFIXES):
            xlsx_to_csv(upload.path, target)
            os.unlink(upload.path)
        else:
            os.replace(upload.path, target)
        handler: ImportJob = spec.create()  # type: ignore[assignment]
        handler.check_upload(target)
        if spec.handler_class.params_form is not None:
            params = validate_form(spec.handler_class.params_form, params)
        started = state.engine.submit(
            spec.name,
            owner=owner,
            params=params,
            redirect_url=safe_redirect(redirect_url),
            job_id=job_id,
            extra={F.UPLOAD_NAME: upload.filename, **start_fields()},
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not started.created:  # an identical import was still active: that one is the answer
        shutil.rmtree(folder, ignore_errors=True)
    return started


def rejected_rows(state: JobState) -> Response:
    """The rows an import rejected, in its upload's own columns plus ``error``, as a download:
    the file to fix and upload again as it is."""
    path = upload_path(get_state().settings.files_dir, state.id)
    if not os.path.isfile(path):
        raise JobNotFound(state.id)  # cleaned up with the job
    plan = json.loads(state.fields.get(F.SOURCE_PLAN) or "{}")
    if not plan:
        raise InvalidParams(_("This import has not read its file yet: nothing was rejected."))
    errors = {k: shown(v) for k, v in get_state().engine.store.iter_hash(state.id, "errors")}
    stem = os.path.splitext(state.fields.get(F.UPLOAD_NAME) or "upload")[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "upload"
    chunks: Any = rejected_rows_csv(path, plan, errors)
    return Response(
        stream_with_context(chunks),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}-rejected.csv"'},
    )
