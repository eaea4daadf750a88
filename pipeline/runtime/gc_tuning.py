"""Python's cyclic garbage collector, kept off what a long-running process built at start.

On these machines a full (generation 2) collection in a component took 40-290 ms, several
times a minute, and freed next to nothing: it walked the ~90,000 objects that imports and
start-up made (modules, classes, functions), which live as long as the process. Each such
pause stopped the event loop, and was the worker's tail latency at 500/s (issue 16).

``gc.freeze()`` moves every object tracked so far to a permanent generation that
collections no longer scan. Reference counting still frees those objects; only a cycle
among them that becomes garbage later stays (start-up state is not dropped in cycles).
Objects made afterwards are collected as before.
"""

from __future__ import annotations

import gc


def freeze_after_startup() -> None:
    """Collect what start-up left as garbage, then freeze the rest out of future scans.

    Called once a component is up (again after each worker assignment: what the first
    collection scans is then only what was made since the last freeze).
    """
    gc.collect()
    gc.freeze()
