"""The demo in English, German or French (``?lang=de``, remembered for the session, else the
browser's language), through Flask-Babel when it is installed (the ``demo`` extra).

batchflow translates its own pages; the demo's own texts (its home page, its outbox, its jobs'
titles) are in the demo's catalogue, ``translations/<lang>/LC_MESSAGES/messages.po``, compiled
when the app starts into the demo's data folder, where Flask-Babel reads it. Templates say every
text through ``_bf``, which looks in batchflow's catalogue, then in the app's.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request, session

LANGUAGES = ("en", "de", "fr")
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translations")


def N_(text: str) -> str:  # noqa: N802 - the gettext convention
    """Mark a text for the demo's catalogue; it is translated where it is shown."""
    return text


def pick_locale() -> str | None:
    """``?lang=de`` (kept in the session), else the browser's best match."""
    asked = request.args.get("lang")
    if asked in LANGUAGES:
        session["lang"] = asked
    return session.get("lang") or request.accept_languages.best_match(LANGUAGES)


def set_up_languages(app: Flask, data: str) -> bool:
    """Flask-Babel on ``app`` with the demo's catalogues compiled under ``data``; False (English
    only) when Flask-Babel is not installed."""
    try:
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po
        from flask_babel import Babel
    except ImportError:
        return False
    folder = os.path.join(data, "translations")
    for code in LANGUAGES[1:]:
        source = os.path.join(HERE, code, "LC_MESSAGES", "messages.po")
        target = os.path.join(folder, code, "LC_MESSAGES")
        os.makedirs(target, exist_ok=True)
        with open(source, "rb") as po:
            catalog: Any = read_po(po, locale=code)
        with open(os.path.join(target, "messages.mo"), "wb") as mo:
            write_mo(mo, catalog)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = folder
    Babel(app, locale_selector=pick_locale)
    return True
