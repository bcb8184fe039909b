"""Checking the ids an item job is started with, as they come from outside."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .exceptions import InvalidParams, TooManyItems
from .i18n import gettext as _

MAX_ID_LENGTH = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_ids(ids: Iterable[Any], limit: int) -> list[str]:
    """``ids`` as the text each is stored as, checked: a list (not a string or a mapping) of at
    most ``limit`` strings or whole numbers, each 1 to :data:`MAX_ID_LENGTH` characters of valid
    Unicode without control characters, and at least one.

    :raises InvalidParams: saying which rule an id broke.
    :raises TooManyItems: more than ``limit`` ids (``BATCHFLOW_MAX_IDS``).
    """
    if isinstance(ids, (str, bytes, dict)):
        raise InvalidParams(_("ids must be a list of strings or numbers."))
    checked: list[str] = []
    for item in ids:
        if len(checked) >= limit:
            raise TooManyItems(
                _(
                    "Too many ids: at most %(limit)s per job (BATCHFLOW_MAX_IDS). Split the "
                    "work, or let the handler produce its ids with items().",
                    limit=limit,
                )
            )
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InvalidParams(_("Each id must be a string or a whole number."))
        text = str(item)
        if not text or len(text) > MAX_ID_LENGTH:
            raise InvalidParams(
                _("Each id must be 1 to %(most)s characters long.", most=MAX_ID_LENGTH)
            )
        if _CONTROL.search(text):
            raise InvalidParams(_("Ids must not contain control characters."))
        if not text.isascii() and _SURROGATE.search(text):
            raise InvalidParams(_("Ids must be valid Unicode text (a lone surrogate is not)."))
        checked.append(text)
    if not checked:
        raise InvalidParams(_("The list of ids is empty: there is nothing to do."))
    return checked
