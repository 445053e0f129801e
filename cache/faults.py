"""Named points in the long-running loops where the fault tests stop a process on purpose.

`ZOOMSHOT_STOP_AT=<point>:<k>:<marker file>` makes the k-th pass through `point(<point>)` write the
marker file and wait there for as long as the marker exists: the test then kills the process with a
real signal, or removes the marker to let it go on. The kill lands at a known point however busy
the machine is, instead of after a guessed delay. Without the variable a point costs one lookup.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

ENV = "ZOOMSHOT_STOP_AT"
_passes: Counter = Counter()
_guard = threading.Lock()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, k, marker = spec.split(":", 2)
    if where != name:
        return
    with _guard:
        _passes[name] += 1
        hit = _passes[name] == int(k)
    if hit:
        Path(marker).write_text(str(os.getpid()))
        while Path(marker).exists():
            time.sleep(0.05)
