"""Python's garbage collector, set for ``plantangenet serve``: a process that keeps a
large, slowly changing heap (every session's state and its last commands' outcomes) and
allocates a great many short-lived objects per request.

With Python's defaults (a young collection every 700 net allocations), a service at 100
bots spent about 12% of its CPU in the collector, most of it in full collections of
80 ms each that also set its p99 latency: requests in flight when a young collection
runs are promoted, and enough promotions trigger a pass over the whole heap. Collecting
the young generation every 10,000 allocations instead, and freezing what startup
allocated (imported modules, the runtime, the connections) so that no full collection
walks it again, cut that to about 1.5% (measured in ``docs/benchmarks.md``,
"The collector"). Reference counting still frees every object that is not in a cycle
at once; only cycles wait for a collection, and 10,000 allocations is a few requests'
worth of memory.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

#: Net allocations between two young collections that ``serve`` sets (Python's: 700).
SERVE_YOUNG_THRESHOLD = 10_000


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """What :func:`settle_collector` did: the thresholds now in force and how many
    objects it froze."""

    thresholds: tuple[int, int, int]
    frozen: int

    def describe(self) -> str:
        """One line for ``serve``'s output."""
        young, middle, old = self.thresholds
        return (
            f"young generation collected every {young:,} allocations "
            f"(thresholds {young}/{middle}/{old}); {self.frozen:,} startup objects frozen"
        )


def settle_collector(young: int = SERVE_YOUNG_THRESHOLD) -> CollectorSettings:
    """Set the young generation's threshold to ``young`` (0: keep the current one) and
    freeze every object alive now, after collecting the garbage startup left; call it
    once the process has started what it will keep. Raises ``ValueError`` for a
    negative ``young``."""
    if young < 0:
        raise ValueError(f"the young generation's threshold must be 0 or more, got {young}")
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    if young:
        gc.set_threshold(young, middle, old)
    first, middle, old = gc.get_threshold()
    return CollectorSettings((first, middle, old), gc.get_freeze_count())
