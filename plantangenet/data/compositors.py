"""Compositors: the data producers a session coordinates with (and never owns).

A compositor has a ``name`` and answers :meth:`Compositor.query` for a
:class:`~plantangenet.domain.disclosure.Region` with samples. The session never
stores what it returns; it shapes it by policy and records that it did.

Two ship with plantangenet:

* :class:`SyntheticCompositor`: a deterministic time series per axis (the same
  region always gives the same samples), for demos, tests and benchmarks;
* :class:`RecordedCompositor`: a bounded buffer of recorded samples, queried
  by region (e.g. fed by a bridge agent).

A compositor is called on the runtime's compositor threads, never on a session
actor's: a slow one delays no other command, and one taking longer than the
runtime's ``compositor_timeout`` (5 s by default) answers ``CompositorFailed``.
``query`` may be called from several threads at once (several sessions, several
queries): make it thread-safe. Raise to refuse (the caller gets
``CompositorFailed``; nothing is charged or recorded).
"""

from __future__ import annotations

import bisect
import importlib
import math
import threading
import zlib
from collections.abc import Iterable

from plantangenet.domain.disclosure import Region, Sample
from plantangenet.domain.query_plan import Compositor as Compositor
from plantangenet.domain.query_plan import covers as covers
from plantangenet.events.fields import MetadataValue

_TAU = 2 * math.pi


class SyntheticCompositor:
    """A deterministic series per axis: a sine wave plus hash noise, every ``step``.

    Each sample has a ``station`` and a ``quality`` field. A region asks for
    ``resolution`` (or ``step``) spacing; regions that would yield more than
    ``max_samples`` are refused.
    """

    def __init__(
        self, name: str = "synthetic", *, step: float = 1.0, max_samples: int = 100_000
    ) -> None:
        if not step > 0:
            raise ValueError("step must be positive")
        self._name = name
        self.step = step
        self.max_samples = max_samples

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"SyntheticCompositor({self._name!r}, step={self.step})"

    def query(self, region: Region) -> list[Sample]:
        step = region.resolution or self.step
        first = math.ceil(region.start / step)
        last = math.floor(region.end / step)
        count = max(0, last - first + 1) * len(region.axes)
        if count > self.max_samples:
            raise ValueError(
                f"the region holds {count} samples; this compositor answers at most "
                f"{self.max_samples} (coarsen the resolution or narrow the interval)"
            )
        return [self.sample(axis, i * step) for axis in region.axes for i in range(first, last + 1)]

    @staticmethod
    def sample(axis: str, time: float) -> Sample:
        """The sample of ``axis`` at ``time`` (the same every time)."""
        seed = zlib.crc32(axis.encode())
        noise = zlib.crc32(f"{axis}@{time!r}".encode()) / 2**32 - 0.5
        value = (seed % 100) + 10 * math.sin(2 * math.pi * time / 24 + seed % 7) + noise
        quality = "good" if noise > -0.3 else "fair"
        return Sample(axis, time, value, {"station": f"st-{seed % 997}", "quality": quality})


class RecordedCompositor:
    """Recorded samples, kept per axis in time order, at most ``capacity`` per axis.

    :meth:`record` may be called from any thread. A query returns the samples
    of every recorded axis the region's axes cover (``ocean`` covers
    ``ocean.temperature``) inside its interval; with a resolution, only the
    first sample of each resolution-wide bucket.
    """

    def __init__(self, name: str = "recorded", *, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._name = name
        self.capacity = capacity
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}
        self._samples: dict[str, list[Sample]] = {}

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"RecordedCompositor({self._name!r}, axes={len(self._times)})"

    def record(self, axis: str, time: float, value: float | None, **fields: MetadataValue) -> None:
        """Add one sample (the oldest of its axis is dropped beyond ``capacity``)."""
        self.extend([Sample(axis, float(time), value, fields)])

    def extend(self, samples: Iterable[Sample]) -> None:
        """Add samples."""
        with self._lock:
            for sample in samples:
                times = self._times.setdefault(sample.axis, [])
                kept = self._samples.setdefault(sample.axis, [])
                at = bisect.bisect_right(times, sample.time)
                times.insert(at, sample.time)
                kept.insert(at, sample)
                if len(times) > self.capacity:
                    del times[0], kept[0]

    def query(self, region: Region) -> list[Sample]:
        with self._lock:
            axes = [a for a in self._times if any(covers(w, a) for w in region.axes)]
            out: list[Sample] = []
            for axis in sorted(axes):
                times = self._times[axis]
                lo = bisect.bisect_left(times, region.start)
                hi = bisect.bisect_right(times, region.end)
                picked = self._samples[axis][lo:hi]
                if region.resolution:
                    seen: set[int] = set()
                    for sample in picked:
                        bucket = math.floor(sample.time / region.resolution)
                        if bucket not in seen:
                            seen.add(bucket)
                            out.append(sample)
                else:
                    out.extend(picked)
            return out


def load_compositor(spec: str) -> Compositor:
    """A compositor from a command-line spec.

    ``synthetic`` and ``recorded`` are the built-ins (default names); otherwise
    ``package.module:attribute``, where the attribute is a compositor or a
    callable (e.g. a class) returning one.
    """
    if spec == "synthetic":
        return SyntheticCompositor()
    if spec == "recorded":
        return RecordedCompositor()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"a compositor is 'synthetic', 'recorded' or 'module:attribute', not {spec!r}"
        )
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, type) or (callable(target) and not isinstance(target, Compositor)):
        target = target()
    made = target
    if not isinstance(made, Compositor):
        raise ValueError(f"{spec} is not a compositor (it needs a name and a query method)")
    return made
