"""How the commands write: progress on stderr."""

from __future__ import annotations

from typing import TextIO


class Progress:
    """Writes replay progress to stderr when it is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, at: int, end: int) -> None:
        if self.enabled and end:
            self.stream.write(f"\rreplaying… sequence {at:,} of {end:,}")
            if at >= end:
                self.stream.write("\n")
            self.stream.flush()
