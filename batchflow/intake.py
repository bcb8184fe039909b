"""What a request brings in, checked before anything is created: the body's size, a start
request's parameters, ids and redirect URL. Everything here answers bad input with a 4xx and a
message (``InvalidParams``, 413), never a server error."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from .exceptions import InvalidParams
from .i18n import gettext as _
from .i18n import locale
from .schema import F

#: Form fields that are not the handler's parameters.
RESERVED_FIELDS = {"csrf_token", "ids", "ids[]", "redirect_url", "submit", "notify_email", "lanes"}


def safe_redirect(url: str | None) -> str | None:
    """``url`` if a browser resolves it to a page of this site, else InvalidParams.

    Only a path is accepted (``/reports?x=1``): one ``/`` and then not a second one or a
    backslash, which browsers read as the start of another host (``//evil``, ``///evil``,
    ``/\\evil``). A full URL is accepted only for the app's own ``SERVER_NAME``: the rule never
    trusts the ``Host`` header the request itself sent.
    """
    if not url:
        return None
    if "\\" in url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidParams(_("redirect_url must point into this site."))
    parts = urlsplit(url)
    local = not parts.scheme and not parts.netloc and url.startswith("/") and url[1:2] != "/"
    server = current_app.config.get("SERVER_NAME")
    own = bool(server) and parts.scheme in ("http", "https") and parts.netloc == server
    if local or own:
        return url
    raise InvalidParams(_("redirect_url must point into this site."))


def read_start_request() -> tuple[dict[str, Any], list[Any] | None, str | None]:
    """Parameters, ids and redirect_url from a JSON body or a form."""
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            body = None
        if not isinstance(body, dict):
            raise InvalidParams('Send a JSON object: {"params": {...}, "ids": [...]}.')
        _check_json(body)
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise InvalidParams(_("params must be a JSON object."))
        ids = body.get("ids")
        if ids is not None and not isinstance(ids, list):
            raise InvalidParams(_("ids must be a JSON array."))
        redirect_url = body.get("redirect_url")
        if redirect_url is not None and not isinstance(redirect_url, str):
            raise InvalidParams(_("redirect_url must be a string."))
        return params, ids, redirect_url
    form = request.form
    ids = form.getlist("ids") or form.getlist("ids[]") or None
    params = {k: v for k, v in form.items() if k not in RESERVED_FIELDS}
    return params, ids, form.get("redirect_url") or request.args.get("redirect_url")


def start_fields() -> dict[str, str]:
    """The job fields a start request brings besides its parameters: the starter's locale (the
    language of their notifications), and ``notify_email`` (the start form's "Email me when it
    is done" box, or ``"notify_email": true`` in JSON): the owner asks for an email."""
    if request.is_json:
        body = request.get_json(silent=True)
        asked = body.get("notify_email", False) if isinstance(body, dict) else False
        if not isinstance(asked, bool):
            raise InvalidParams(_("notify_email must be true or false."))
    else:
        asked = request.form.get("notify_email", "") in ("1", "y", "on", "true")
    fields = {F.LOCALE: locale()}
    return {**fields, F.NOTIFY_EMAIL: "1"} if asked else fields


def start_lanes() -> int | None:
    """The lanes a start request asks for (``"lanes": 4`` in JSON, a ``lanes`` form field), or
    None for the handler's own; the engine holds it to the handler's ``max_lanes``."""
    if request.is_json:
        body = request.get_json(silent=True)
        asked = body.get("lanes") if isinstance(body, dict) else None
    else:
        text = request.form.get("lanes", "").strip()
        asked = int(text) if text.isdigit() and len(text) < 10 else (text or None)
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)):
        raise InvalidParams(_("lanes must be a whole number."))
    return asked


#: How deep a start request's JSON may nest (params are settings, not documents).
MAX_JSON_DEPTH = 32


def _check_json(body: Any) -> None:
    """InvalidParams unless ``body`` nests at most :data:`MAX_JSON_DEPTH` levels and all its text
    is valid Unicode (JSON may carry a lone surrogate such as ``"\\ud800"``; Redis may not)."""
    level = [body]
    for _depth in range(MAX_JSON_DEPTH + 1):
        level = [
            child
            for value in level
            if isinstance(value, (dict, list))
            for child in (value.values() if isinstance(value, dict) else value)
        ]
        if not level:
            break
    else:
        raise InvalidParams(
            _("The JSON nests too deeply: at most %(most)s levels.", most=MAX_JSON_DEPTH)
        )
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParams(
            _("The request carries text that is not valid Unicode (a lone surrogate).")
        ) from None


def validate_form(form_class: type, params: dict[str, Any]) -> dict[str, Any]:
    """Typed parameters from a handler's Flask-WTF form, or InvalidParams with field errors."""
    form = form_class(formdata=MultiDict(params), meta={"csrf": False})
    if not form.validate():
        raise InvalidParams(_("Some fields need attention."), errors=dict(form.errors))
    data = {k: v for k, v in form.data.items() if k not in RESERVED_FIELDS}
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def limit_body(limit: int) -> None:
    """Refuse a body over ``limit`` bytes with 413, whatever the app's own limit: a declared
    length before anything reads it; a chunked body (no length) as it is read, one byte past the
    limit (werkzeug's reader would stop at the limit and hand on a truncated body)."""
    if request.content_length is not None:
        request.max_content_length = limit
        return
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True)) > limit:
        raise RequestEntityTooLarge()
