"""Receiving a file upload: the multipart body is parsed as it arrives and the file part written
straight to disk, never held whole in memory.

Call :func:`receive_upload` before anything reads the request's body (``request.form``,
``request.files``, ``request.get_data()``, a CSRF check that reads the form): the body can be
read once. The other form fields come back on :attr:`Upload.form` (and on ``request.form``, so a
CSRF check run afterwards finds its token).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import unicodedata
from typing import IO, TYPE_CHECKING

from werkzeug.datastructures import FileStorage, ImmutableMultiDict, MultiDict
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request
from werkzeug.wsgi import get_content_length, get_input_stream

from .exceptions import ConfigurationError, InvalidParams
from .i18n import N_
from .i18n import gettext as _

if TYPE_CHECKING:
    from werkzeug.formparser import TStreamFactory

#: The parts of the body that are not files (the start form's fields) may take this much memory.
MAX_FORM_MEMORY = 500_000
CHOOSE_A_FILE = N_("Choose a file to upload, then send the form again.")
CUT_OFF = N_("The upload was cut off before it ended: send the file again.")


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file received from a request.

    :param path: where it is, under the ``dest_dir`` given (owner-only permissions); its suffix
        is the client's file name's (``.csv``, ``.xlsx``), lowercased.
    :param filename: the client's name for it, cleaned: for display only, never for a path.
    :param size: its size in bytes.
    :param form: the other fields of the form (parameters, the CSRF token).
    """

    path: str
    filename: str
    size: int
    form: MultiDict[str, str]


def display_name(filename: str | None) -> str:
    """The last part of a client's file name, without control or format characters (which can
    reorder the text around them), spaces collapsed, at most 200 characters."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    return " ".join(name.split())[:200]


def _suffix(filename: str | None) -> str:
    suffix = os.path.splitext(display_name(filename))[1].lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _limit_text(max_bytes: int) -> str:
    if max_bytes >= 1024 * 1024:
        return f"{max_bytes / (1024 * 1024):.3g} MiB"
    return f"{max_bytes / 1024:.3g} KiB" if max_bytes >= 1024 else f"{max_bytes} bytes"


class _CountingStream:
    """The body as the parser reads it, counted, so a body shorter than its Content-Length
    (the client went away) is told apart from a complete one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data


def receive_upload(
    request: Request, dest_dir: str, *, field: str = "file", max_bytes: int
) -> Upload:
    """Stream the file of form field ``field`` into a new file under ``dest_dir`` (created
    owner-only, 0o700; the file is 0o600). Every file part is written as it arrives; the ones not
    wanted, and everything on failure, are deleted: nothing is left behind but the upload.

    :param max_bytes: the most the whole body may take (the file and the few other fields).
    :raises RequestEntityTooLarge: the body is longer than ``max_bytes`` (HTTP 413), by its
        Content-Length before anything is read, or as a chunked body is read.
    :raises InvalidParams: no file chosen, a body cut off before its end, a body that is not a
        multipart form (HTTP 400).
    :raises ConfigurationError: something read the body before this was called.
    """
    environ = request.environ
    if any(name in vars(request) for name in ("stream", "form", "files")):
        raise ConfigurationError(
            "The request's body was read before receive_upload (request.form, request.files, "
            "or a CSRF check that reads the form): call receive_upload first, then check the "
            "CSRF token in Upload.form."
        )
    mimetype, options = parse_options_header(environ.get("CONTENT_TYPE"))
    if mimetype != "multipart/form-data":
        raise InvalidParams(
            _(CHOOSE_A_FILE) + " " + _("(The form must be sent as multipart/form-data.)")
        )
    length = get_content_length(environ)
    if length is None and not environ.get("wsgi.input_terminated"):
        raise InvalidParams(_("Send the upload with a Content-Length header."))
    os.makedirs(dest_dir, mode=0o700, exist_ok=True)
    parts: list[tuple[str, IO[bytes]]] = []

    def stream_factory(
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        fd, path = tempfile.mkstemp(prefix="upload-", suffix=_suffix(filename), dir=dest_dir)
        parts.append((path, os.fdopen(fd, "w+b")))
        return parts[-1][1]

    kept = None
    try:
        form, files = _parse(request, stream_factory, options, length, max_bytes)
        # What the body held, for a CSRF check or a form read afterwards (also when the upload
        # is refused below: a page re-rendered with the error keeps its token).
        request.form = ImmutableMultiDict(form)
        request.files = ImmutableMultiDict()  # the file is on disk; nothing reads the body again
        done = {id(storage.stream) for storage in files.values()}
        if any(id(file) not in done for _name, file in parts):
            raise InvalidParams(
                _(CUT_OFF)
            )  # a file part that never ended: the form's end is missing
        storage = files.get(field)
        if storage is None or not display_name(storage.filename):
            raise InvalidParams(_(CHOOSE_A_FILE))
        kept = next(path for path, file in parts if file is storage.stream)
        size = storage.stream.seek(0, os.SEEK_END)
    finally:
        for path, file in parts:
            file.close()
            if path != kept:
                os.unlink(path)
    return Upload(kept, display_name(storage.filename), size, request.form)


def _parse(
    request: Request,
    stream_factory: TStreamFactory,
    options: dict[str, str],
    length: int | None,
    max_bytes: int,
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """The form fields and the files of the request's multipart body."""
    parser = FormDataParser(
        stream_factory, max_form_memory_size=MAX_FORM_MEMORY, max_content_length=max_bytes
    )
    try:
        stream = _CountingStream(get_input_stream(request.environ, max_content_length=max_bytes))
        _stream, form, files = parser.parse(stream, "multipart/form-data", length, options)  # type: ignore[arg-type]
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(
            f"The file is too large: uploads may take at most {_limit_text(max_bytes)}."
        ) from None
    except (ClientDisconnected, OSError):  # the client went away; a chunked body broke off
        raise InvalidParams(_(CUT_OFF)) from None
    except ValueError as exc:  # the multipart parser's: no boundary, a malformed part
        raise InvalidParams(
            _("The upload is not a valid form (%(why)s): send it again.", why=exc)
        ) from None
    if length is not None and stream.count < length:
        raise InvalidParams(_(CUT_OFF))
    return form, files
