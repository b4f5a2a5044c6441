"""Late hand-ins, with nbgrader's own late-submission handling.

``--due 2026-11-20T23:59+01:00 [--late-penalty 10]``: the due date goes on
each graded assignment in the gradebook (nbgrader's ``Assignment.duedate``);
each hand-in's time (the LMS zip entry's timestamp, or the file's
modification time for a folder) is written as nbgrader's ``timestamp.txt``
in its ``submitted/<student>/<assignment>/`` folder, which nbgrader's
autograde reads into ``SubmittedAssignment.timestamp``; nbgrader's
``AssignLatePenalties`` (already in the course's autograde pipeline) then asks
the plugin below for the penalty. A time without a UTC offset (zip entries
carry none) is read in the offset of ``--due`` (UTC when ``--due`` has none).

:class:`PerDayPenalty` takes ``percent_per_day`` percent of the notebook's
score for each started day late (a second late is one day), at most the whole
score; 0 (the default) records how late a hand-in was and takes nothing.
``grades.csv`` (nbgrader's exporter) has ``timestamp``, ``duedate``,
``raw_score``, ``late_submission_penalty`` and ``score`` columns; the report
lists each late hand-in, how late, and the penalty.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from nbgrader.api import Gradebook
from nbgrader.plugins import LateSubmissionPlugin
from traitlets import Float

DAY_S = 86400.0


def parse_due(text: str) -> datetime:
    """``--due``'s value as an aware datetime; a clear ValueError otherwise."""
    try:
        due = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ValueError(f"--due: expected a date and time such as 2026-11-20T23:59 or 2026-11-20T23:59+01:00 "
                         f"(ISO 8601; UTC when no offset is given); got {text!r}") from None
    return due if due.tzinfo else due.replace(tzinfo=UTC)


def parse_penalty(text: str) -> float:
    """``--late-penalty``'s value: percent of the score per started day late, 0 to 100."""
    try:
        value = float(str(text).rstrip("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise ValueError(f"--late-penalty: expected a percentage of the score per day late, 0 to 100; got {text!r}")
    return value


def submitted_at(saved: tuple, tz) -> str | None:
    """nbgrader's timestamp text (UTC) for a zip entry's or file's ``saved`` time read in ``tz``; None if unknown."""
    if len(saved) < 6:
        return None
    when = datetime(*saved[:6], tzinfo=tz)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f %Z")


def set_duedate(db_url: str, assignments, due: datetime) -> None:
    """Put ``due`` (as naive UTC, as nbgrader stores it) on each assignment in the gradebook."""
    naive = due.astimezone(UTC).replace(tzinfo=None)
    with Gradebook(db_url) as gb:
        for a in assignments:
            gb.update_or_create_assignment(a, duedate=naive)


class PerDayPenalty(LateSubmissionPlugin):
    """``percent_per_day`` percent of the score for each started day late, at most the score."""

    percent_per_day = Float(0.0, help="percent of the score taken per started day late").tag(config=True)

    def late_submission_penalty(self, student_id, score, total_seconds_late):
        if total_seconds_late <= 0 or self.percent_per_day <= 0:
            return None
        days = math.ceil(total_seconds_late / DAY_S)
        return min(score, score * self.percent_per_day * days / 100.0)


def how_late(seconds: float) -> str:
    """``1 d 2 h 3 min`` for a number of seconds (under a minute: seconds)."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    d, rest = divmod(int(seconds), int(DAY_S))
    h, rest = divmod(rest, 3600)
    parts = [f"{d} d"] * bool(d) + [f"{h} h"] * bool(h) + [f"{rest // 60} min"] * bool(rest // 60)
    return " ".join(parts)


def report_section(db_url: str, graded) -> list[str]:
    """The report's "Late hand-ins" section for the submissions in ``graded``."""
    lines = ["## Late hand-ins", ""]
    found = []
    with Gradebook(db_url) as gb:
        for assignment, student in graded:
            sub = gb.find_submission(assignment, student)
            if sub.total_seconds_late > 0:
                penalty = sub.late_submission_penalty or 0.0
                found.append(f"- {student} / {assignment}: handed in {sub.timestamp:%Y-%m-%d %H:%M:%S} UTC, due "
                             f"{sub.duedate:%Y-%m-%d %H:%M:%S} UTC: late by {how_late(sub.total_seconds_late)}; "
                             f"penalty {penalty:g} points ({sub.score:g} -> {sub.score - penalty:g})")
    return lines + (found or ["None."]) + [""]

