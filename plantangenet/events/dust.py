"""Dust events: the session's budget unit moving between accounts.

Accounts are agent ids and :data:`TREASURY`, the session's own account. Dust
is created only by ``DustDeposited``; every other movement takes from one
account what it gives to another, so the sum of all balances always equals
the sum of all deposits.
"""

from __future__ import annotations

from collections.abc import Mapping

from plantangenet.events.base import Event, event_type

#: The session's own account: charges go there, grants may come from there.
TREASURY = "@session"


@event_type("PricesChanged", version=1)
class PricesChanged(Event):
    """The session's price table is now ``prices`` (action -> dust per unit).

    A price for ``<action>.<level>`` (e.g. ``cursor.query.degraded``) wins over
    one for ``<action>``; query prices are per axis queried.
    """

    prices: Mapping[str, int]


@event_type("DustDeposited", version=1)
class DustDeposited(Event):
    """``amount`` new dust was put into ``account`` (the only way dust is created)."""

    account: str
    amount: int
    memo: str = ""


@event_type("DustGranted", version=1)
class DustGranted(Event):
    """``amount`` dust moved from ``source`` to ``target`` (e.g. the treasury to an agent)."""

    source: str
    target: str
    amount: int
    memo: str = ""


@event_type("DustCharged", version=1)
class DustCharged(Event):
    """``account`` paid ``amount`` to the treasury for ``action`` (``reference``: what for)."""

    account: str
    amount: int
    action: str
    reference: str = ""


@event_type("ChargeRefused", version=1)
class ChargeRefused(Event):
    """``account`` could not pay ``amount`` for ``action`` (it held ``balance``).

    Recorded instead of the command's events: nothing was done or disclosed.
    """

    account: str
    amount: int
    balance: int
    action: str
    command: str


DUST_EVENTS: tuple[type[Event], ...] = (
    PricesChanged,
    DustDeposited,
    DustGranted,
    DustCharged,
    ChargeRefused,
)


def movements(event: Event) -> Mapping[str, int]:
    """How ``event`` changes balances: account -> signed amount (empty if it moves none)."""
    match event:
        case DustDeposited(account=account, amount=amount):
            return {account: amount}
        case DustGranted(source=source, target=target, amount=amount):
            return {source: -amount, target: amount} if source != target else {}
        case DustCharged(account=account, amount=amount):
            return {account: -amount, TREASURY: amount} if account != TREASURY else {}
    return {}
