"""Every text batchflow shows, in the reader's language: through Flask-Babel when the app uses it
(the ``i18n`` extra), in English otherwise.

- ``gettext(text, **args)`` (imported as ``_``) translates now, in the current locale: one set
  with :func:`using` (a worker writing an email in its owner's language), else the request's
  (Flask-Babel's ``get_locale()``, which the web layer connects with :func:`connect`: this module
  imports no Flask). ``N_(text)`` only marks a text for the catalogue; it is translated where it
  is shown.
- Catalogues: ``batchflow/translations/<locale>/LC_MESSAGES/batchflow.po``, read and compiled in
  memory the first time a locale is needed (no build step; ``tests/test_i18n.py`` checks that
  every text is in every catalogue). A text batchflow's catalogue does not have is looked up in the
  app's own (Flask-Babel's default domain): a handler's labels and messages are the app's texts.
- A text a job keeps (a message, a per-id error, a label computed from parameters) may be a
  :class:`Message`: a message id with its arguments, stored as :data:`MARK` and JSON, and
  rendered by :func:`shown` in each reader's language, its numbers formatted for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

try:  # Babel comes with Flask-Babel: the i18n extra
    from babel import Locale, UnknownLocaleError
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    HAVE_BABEL = True
except ImportError:  # pragma: no cover - installs without the extra
    HAVE_BABEL = False

DOMAIN = "batchflow"
TRANSLATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translations")
#: What starts a stored text that is a :class:`Message`: a private-use character, which no
#: real text starts with and ``str.strip()`` keeps (it is not whitespace, unlike the ASCII
#: separators).
MARK = "\ue0bf"

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("bf_locale", default=None)
_catalogues: dict[str, Any] = {}


def _no_request_locale() -> str | None:
    return None


def _untranslated(text: str, code: str) -> str:
    return text


#: Set by :func:`connect`: the request's locale code (None outside a request, or without
#: Flask-Babel), and the app's own translation of a text (Flask-Babel's ``gettext``).
_request_locale: Callable[[], str | None] = _no_request_locale
_app_gettext: Callable[[str, str], str] = _untranslated


def connect(
    request_locale: Callable[[], str | None], app_gettext: Callable[[str, str], str]
) -> None:
    """Where the locale of a request and the app's own translations (``app_gettext(text,
    locale)``) come from: the web layer calls this once, with Flask-Babel's."""
    global _request_locale, _app_gettext
    _request_locale, _app_gettext = request_locale, app_gettext


def N_(text: str) -> str:  # noqa: N802 - the gettext convention
    """Mark ``text`` for the catalogue; it is translated where it is shown."""
    return text


@dataclasses.dataclass(frozen=True)
class Message:
    """A text to show in each reader's language: ``Message("Exported %(count)s contacts from
    %(city)s", count=12430, city="Berlin")``. ``str()`` of it is the English; a job keeps it as a
    message id with its arguments (numbers are formatted for each reader)."""

    text: str
    args: dict[str, Any]

    def __init__(self, text: str, **args: Any) -> None:
        object.__setattr__(self, "text", str(text))
        object.__setattr__(self, "args", args)

    def __str__(self) -> str:
        with using("en"):
            return render(self.text, self.args)

    def stored(self) -> str:
        """The form a job keeps: :data:`MARK` and JSON."""
        args = {k: stored(v) if isinstance(v, Message) else v for k, v in self.args.items()}
        return MARK + json.dumps({"id": self.text, "args": args}, default=str)


def stored(text: Any) -> str:
    """``text`` as a job keeps it: a :class:`Message` marked, anything else as a string."""
    return text.stored() if isinstance(text, Message) else str(text)


def shown(text: Any) -> str:
    """A kept text in the current locale: a stored :class:`Message` translated and filled in,
    a plain text translated if a catalogue has it (labels are the app's texts), else as it is."""
    if isinstance(text, Message):
        return render(text.text, text.args)
    raw = "" if text is None else str(text)
    if raw.startswith(MARK):
        try:
            data = json.loads(raw[1:])
            return render(str(data["id"]), dict(data.get("args") or {}))
        except (ValueError, KeyError, TypeError):
            return raw[1:]
    return gettext(raw) if raw else ""


def render(text: str, args: dict[str, Any]) -> str:
    """``text`` translated, with ``args`` put in, numbers formatted for the locale."""
    translated = gettext(text)
    if not args:
        return translated
    values = {k: _argument(v) for k, v in args.items()}
    for template in (translated, text):  # the English if a translation lost a placeholder
        try:
            return template % values
        except (KeyError, ValueError, TypeError):
            continue
    return text  # a message whose own placeholders do not match its arguments: as written


def _argument(value: Any) -> Any:
    """An argument as shown: a number formatted for the locale, a kept text rendered."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    if isinstance(value, (str, Message)):
        return shown(value) if isinstance(value, Message) or value.startswith(MARK) else value
    return value


def gettext(text: str, **args: Any) -> str:
    """``text`` in the current locale (batchflow's catalogue, then the app's), with ``args``."""
    translated = text
    code = locale()
    if code != "en" and HAVE_BABEL:
        translated = str(_catalogue(code).gettext(text))
        if translated == text:
            translated = _app_gettext(text, code)
    if not args:
        return translated
    return translated % {k: shown(v) if isinstance(v, Message) else v for k, v in args.items()}


def locale() -> str:
    """The current locale's code: set with :func:`using`, else the request's, else ``"en"``."""
    return _forced.get() or _request_locale() or "en"


@contextlib.contextmanager
def using(code: str | None) -> Iterator[None]:
    """Texts in locale ``code`` inside the block (None: the request's, as outside it)."""
    token = _forced.set(code or None)
    try:
        yield
    finally:
        _forced.reset(token)


def number(value: float) -> str:
    """``1234`` -> ``"1,234"`` in English, ``"1.234"`` in German."""
    code = locale()
    if code == "en" or not HAVE_BABEL:
        return f"{value:,}"
    from babel.numbers import format_decimal

    return str(format_decimal(value, locale=_locale(code)))


def _locale(code: str) -> Any:
    try:
        return Locale.parse(code)
    except (ValueError, UnknownLocaleError):
        return Locale.parse("en")


def _catalogue(code: str) -> Any:
    """batchflow's translations into ``code`` (its language, if the region has none), compiled
    in memory from the shipped ``.po`` the first time; an empty catalogue for a language
    batchflow does not ship."""
    if code in _catalogues:
        return _catalogues[code]
    found = Translations()
    for candidate in (code, code.split("_")[0]):
        path = os.path.join(TRANSLATIONS, candidate, "LC_MESSAGES", f"{DOMAIN}.po")
        if os.path.isfile(path):
            with open(path, "rb") as po:
                catalog = read_po(po, locale=candidate, domain=DOMAIN)
            buffer = io.BytesIO()
            write_mo(buffer, catalog)
            buffer.seek(0)
            found = Translations(buffer, domain=DOMAIN)
            break
    _catalogues[code] = found
    return found
