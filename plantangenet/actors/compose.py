"""Asking compositors off the session actor's thread: the compositor pool and its timeout.

A data query's compositor is called on a thread of the compositor pool
(:func:`default_compositor_pool`, shared by the process unless the runtime gives one),
never on a session actor's; its answer comes back to the actor as a message (see
:class:`~plantangenet.actors.session.SessionActor`). Every name is importable from
:mod:`plantangenet.actors.session` too.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading

from plantangenet.domain.decide import (
    show,
)
from plantangenet.domain.disclosure import Sample
from plantangenet.domain.query_plan import Compositor, Plan
from plantangenet.errors import (
    CompositorFailed,
)

#: Seconds a compositor may take to answer a data query before the query is answered
#: ``CompositorFailed`` (nothing recorded), unless told otherwise.
DEFAULT_COMPOSITOR_TIMEOUT = 5.0


#: Threads of the process's shared compositor pool (runtimes usually bring their own).
DEFAULT_COMPOSITOR_THREADS = 8


#: How many times a data query is asked again when the state changed its plan (its
#: cursor moved, say) while its compositor answered, before it fails.
MAX_COMPOSE_ATTEMPTS = 3


_compositor_pool: concurrent.futures.ThreadPoolExecutor | None = None


_compositor_pool_lock = threading.Lock()


def default_compositor_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's shared compositor threads (started on first use)."""
    global _compositor_pool
    with _compositor_pool_lock:
        if _compositor_pool is None:
            _compositor_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=DEFAULT_COMPOSITOR_THREADS,
                thread_name_prefix="plantangenet-compositor",
            )
        return _compositor_pool


def _ask(compositor: Compositor, plan: Plan, most: int) -> list[Sample]:
    """``compositor``'s answer to ``plan`` (on a compositor thread), at most ``most`` + 1
    samples of it (more is refused by ``disclose``); its failures as ``CompositorFailed``."""
    try:
        answer = compositor.query(plan.region)
    except Exception as exc:
        raise CompositorFailed(f"compositor {plan.compositor!r} failed: {show(exc)}") from None
    try:
        return list(itertools.islice(answer, most + 1))
    except Exception as exc:  # not iterable, or it raised while iterated
        raise CompositorFailed(
            f"compositor {plan.compositor!r} returned bad data: {show(exc)}"
        ) from None
