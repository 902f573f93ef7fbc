"""The command line: ``plantangenet`` and its commands, rendered for people and scripts.

Holds the argument parser and every command, the renderings of the cursor index and the ledger
(``reports``), ``replay-agent``/``replay-serve``, ``status``, and ``asyncapi``
(``python -m plantangenet.cli.asyncapi`` writes docs/asyncapi.yaml from the registries of every
module).
May import every other room; nothing imports it but ``plantangenet.__main__``.

The ``plantangenet`` command line (see :mod:`plantangenet.cli.parser` for its commands).

Modules: ``parser`` (the options and :func:`main`), ``reading`` (sessions,
history, audit), ``travel`` (state, diff, why, fork, explore), ``reports``
(cursors, ledger, verify, quarantine), ``serving`` (status, serve, nats-config),
``demo``, ``replaying`` (replay-agent, replay-serve) and ``output`` (how they write).
"""

from __future__ import annotations

from plantangenet.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
