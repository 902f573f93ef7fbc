"""The old import path of :mod:`plantangenet.cli.replaying` (tests and scripts use it)."""

from plantangenet.cli.replaying import Prompt, add_parsers, load_behaviour

__all__ = ["Prompt", "add_parsers", "load_behaviour"]
