"""Python's cyclic garbage collector tuned for a long-running serving loop (`for_serving`).

The hot path allocates tens of thousands of short-lived containers per poll (orjson builds a list per
chunk row and a dict per message; the engine, a few lists per record), all freed by reference counting.
With the default thresholds (a collection every 700 net allocations, a full one every 100 collections)
the collector ran several times per poll and each full collection walked every object the start-up left
behind (modules, functions, the client libraries): ~15% of a 10-step-chunk poll's time (1000 messages,
10k steps), and pauses in the latency tail.

`for_serving()`, called once the process has started up (after imports, model load, client set-up):
``gc.freeze()`` moves everything alive to the permanent generation, which collections skip, and the
first generation is collected every `GEN0_THRESHOLD` allocations instead of 700. Reference cycles are
still collected, only later: the loop makes few (a caught exception's traceback), and a window of
`GEN0_THRESHOLD` containers is a few MB at most.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000  # container allocations between young collections (Python's default: 700)


def for_serving() -> None:
    """Freeze what start-up made and collect less often (see the module docstring)."""
    gc.collect()  # start-up's own garbage first, so it is not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
