"""The one time-stamp format of every file the pipeline writes: ISO 8601, UTC, microseconds.

Stamps order what was written: a result file's `created`, a run's, a feature file's. Within one process
each call returns a later stamp than the one before (a clock that has not moved on, or has stepped back,
is pushed forward by a microsecond), so two files written in one second never tie.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

_last = datetime.min.replace(tzinfo=UTC)
_guard = threading.Lock()


def now() -> str:
    """The current UTC time, e.g. `2026-12-02T11:35:36.104512+00:00`, later than any earlier call's."""
    global _last
    with _guard:
        _last = max(datetime.now(UTC), _last + timedelta(microseconds=1))
        return _last.isoformat(timespec="microseconds")
