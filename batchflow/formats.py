"""Numbers, times, durations and rates as a job's texts show them (see :mod:`batchflow.display`),
in the current locale (:mod:`batchflow.i18n`; in English, exactly as before there was one)."""

from __future__ import annotations

import datetime
import math
from decimal import ROUND_HALF_UP, Decimal

from .i18n import gettext as _
from .i18n import locale, number


def _half_up(value: float, digits: int = 0) -> Decimal:
    return Decimal(str(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def format_count(n: int | float | None) -> str:
    """``1234`` -> ``"1,234"`` (``"1.234"`` in German); None is 0."""
    return number(int(n or 0))


def format_percent(percent: float | None) -> str:
    """Whole percent, rounded down so 100% means done: ``99.9`` -> ``"99%"``; None -> ``""``."""
    if percent is None:
        return ""
    return _("%(percent)s%%", percent=math.floor(max(0.0, min(100.0, percent))))


def format_duration(seconds: float | None) -> str:
    """``200`` -> ``"3 min 20 s"``, ``3900`` -> ``"1 h 5 min"``; None -> ``"—"``."""
    if seconds is None:
        return "—"
    s = int(_half_up(max(0.0, seconds)))
    if s < 60:
        return _("%(s)s s", s=s)
    if s < 3600:
        if s % 60:
            return _("%(min)s min %(s)s s", min=s // 60, s=s % 60)
        return _("%(min)s min", min=s // 60)
    if s % 3600 // 60:
        return _("%(h)s h %(min)s min", h=s // 3600, min=s % 3600 // 60)
    return _("%(h)s h", h=s // 3600)


def format_eta(seconds: float | None) -> str:
    """Time left, roughly: ``"a few seconds left"``, ``"about 40 s left"``, ``"about 2 min left"``;
    ``""`` when unknown."""
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return ""
    if seconds < 10:
        return _("a few seconds left")
    if seconds < 60:
        return _("about %(duration)s left", duration=_("%(s)s s", s=math.ceil(seconds / 10) * 10))
    return _("about %(duration)s left", duration=format_duration(int(_half_up(seconds / 60)) * 60))


def format_rate(rate: float | None) -> str:
    """Units per second, to 2 significant-ish digits: ``120.5`` -> ``"121 per second"``."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return ""
    digits = 0 if rate >= 10 else 1 if rate >= 1 else 2
    value = _half_up(rate, digits)
    if locale() == "en":
        text = f"{value:,.{digits}f}"
        if digits:
            text = text.rstrip("0").rstrip(".")
    else:
        text = number(float(value)) if digits else number(int(value))
    return _("%(rate)s per second", rate=text)


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)


def format_iso(ts: float | None) -> str:
    """A Unix time as ISO 8601 in UTC (a ``<time datetime>``); None -> ``""``."""
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


def format_datetime(ts: float | None) -> str:
    """A Unix time as ``"2023-11-14 22:13 UTC"`` (the script may show it in local time); in
    another locale, that locale's medium date and short time, still in UTC."""
    if not ts:
        return "—"
    if locale() == "en":
        return _utc(ts).strftime("%Y-%m-%d %H:%M UTC")
    from babel.dates import format_date, format_time

    day = format_date(_utc(ts), "medium", locale=locale())
    return f"{day} {format_time(_utc(ts), 'HH:mm', tzinfo=datetime.timezone.utc)} UTC"


def format_clock(ts: float | None) -> str:
    """A Unix time of day as ``"22:13:20 UTC"`` (the script may show it in local time)."""
    return _utc(ts).strftime("%H:%M:%S UTC") if ts else ""
