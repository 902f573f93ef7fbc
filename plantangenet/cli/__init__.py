"""The ``plantangenet`` command line (see :mod:`plantangenet.cli.parser` for its commands).

Modules: ``parser`` (the options and :func:`main`), ``reading`` (sessions,
history, audit), ``travel`` (state, diff, why, fork, explore), ``reports``
(cursors, ledger, verify, quarantine), ``serving`` (status, serve, nats-config),
``demo``, ``replaying`` (replay-agent, replay-serve) and ``output`` (how they write).
"""

from __future__ import annotations

from plantangenet.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
