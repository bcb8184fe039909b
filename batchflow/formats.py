"""Numbers, times, durations and rates as a job's texts show them (see :mod:`batchflow.display`)."""

from __future__ import annotations

import datetime
import math
from decimal import ROUND_HALF_UP, Decimal


def _half_up(value: float, digits: int = 0) -> Decimal:
    return Decimal(str(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def format_count(n: int | float | None) -> str:
    """``1234`` -> ``"1,234"``; None is 0."""
    return f"{int(n or 0):,}"


def format_percent(percent: float | None) -> str:
    """Whole percent, rounded down so 100% means done: ``99.9`` -> ``"99%"``; None -> ``""``."""
    if percent is None:
        return ""
    return f"{math.floor(max(0.0, min(100.0, percent)))}%"


def format_duration(seconds: float | None) -> str:
    """``200`` -> ``"3 min 20 s"``, ``3900`` -> ``"1 h 5 min"``; None -> ``"—"``."""
    if seconds is None:
        return "—"
    s = int(_half_up(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")


def format_eta(seconds: float | None) -> str:
    """Time left, roughly: ``"a few seconds left"``, ``"about 40 s left"``, ``"about 2 min left"``;
    ``""`` when unknown."""
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return ""
    if seconds < 10:
        return "a few seconds left"
    if seconds < 60:
        return f"about {math.ceil(seconds / 10) * 10} s left"
    return f"about {format_duration(int(_half_up(seconds / 60)) * 60)} left"


def format_rate(rate: float | None) -> str:
    """Units per second, to 2 significant-ish digits: ``120.5`` -> ``"121 per second"``."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return ""
    digits = 0 if rate >= 10 else 1 if rate >= 1 else 2
    value = _half_up(rate, digits)
    text = f"{value:,.{digits}f}"
    if digits:
        text = text.rstrip("0").rstrip(".")
    return f"{text} per second"


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)


def format_iso(ts: float | None) -> str:
    """A Unix time as ISO 8601 in UTC (a ``<time datetime>``); None -> ``""``."""
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


def format_datetime(ts: float | None) -> str:
    """A Unix time as ``"2023-11-14 22:13 UTC"`` (the script may show it in local time)."""
    return _utc(ts).strftime("%Y-%m-%d %H:%M UTC") if ts else "—"


def format_clock(ts: float | None) -> str:
    """A Unix time of day as ``"22:13:20 UTC"`` (the script may show it in local time)."""
    return _utc(ts).strftime("%H:%M:%S UTC") if ts else ""
