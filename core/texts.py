"""How values read to a person on a page: names, times, waiting times, the disclaimer."""

from __future__ import annotations

from datetime import datetime, time, timedelta


def person_name(name: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" as a reader writes it: "Family, Given
    Middle". Only the alphabetic group (before any '=') is shown."""
    family, given, middle, prefix, suffix = ([*name.split("=")[0].split("^"), "", "", "", ""])[:5]
    forenames = " ".join(part for part in (prefix, given, middle, suffix) if part)
    return f"{family}, {forenames}" if family and forenames else family or forenames


def local_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z") if moment else ""


def duration(span: timedelta | float) -> str:
    """Minutes, hours and days: a reader looking for what is stuck needs the order of
    magnitude, not seconds; a clock skew between node and worker never reads as negative."""
    seconds = span.total_seconds() if isinstance(span, timedelta) else span
    minutes = max(int(seconds // 60), 0)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min" if minutes else "under 1 min"


# On every page and report that shows a result.
DISCLAIMER = (
    "Decision support, not a diagnosis. Every study must be read by a radiologist; "
    "an unflagged study is not a normal study."
)


def as_local(moment: datetime) -> datetime:
    """A time given without an offset means local time, wherever a person types one."""
    return moment.astimezone() if moment.tzinfo is None else moment


def clock(moment: time) -> str:
    """A DICOM time as the modality wrote it (it carries no zone), to the minute."""
    return moment.strftime("%H:%M")
