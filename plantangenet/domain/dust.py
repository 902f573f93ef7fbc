"""Dust decisions: deposits, grants, the price table, and charging priced actions.

Pure, like :mod:`plantangenet.domain.decide`: each function takes the folded state
and returns events or raises. Dust amounts are integers (no rounding ever
creates or loses dust). A charge the payer cannot cover raises
:class:`~plantangenet.errors.InsufficientDust` carrying the ``ChargeRefused``
event the session records; nothing else of the command happens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from plantangenet.errors import InsufficientDust, InvalidCommand, UnknownAgent
from plantangenet.events.base import Event
from plantangenet.events.dust import (
    TREASURY,
    ChargeRefused,
    DustCharged,
    DustDeposited,
    DustGranted,
    PricesChanged,
)
from plantangenet.projections.session import SessionState

#: The most dust one movement or one price may carry (fits a signed 64-bit integer).
MAX_AMOUNT = 2**53
#: Price-table keys: dotted action names, optionally ending in a level.
_PRICE_KEY = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_-]+){0,3}")
MAX_PRICES = 256
#: Actions never charged: leaving, ending, and moving dust itself.
FREE_ACTIONS = frozenset(
    {
        "session.start",
        "session.end",
        "session.detach",
        "dust.deposit",
        "dust.grant",
        "dust.price",
        "chem.propose",
        "chem.accept",
        "chem.refuse",
        "chem.revoke",
        "chem.disclose",
    }
)


def account_resource(account: str) -> str:
    """The policy resource for a dust account: ``dust.treasury`` or ``dust.agent.<id>``."""
    return "dust.treasury" if account == TREASURY else f"dust.agent.{account}"


def check_amount(amount: object, label: str = "amount") -> int:
    """``amount`` if it is a positive whole number of dust, else :class:`InvalidCommand`."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidCommand(f"{label} must be a whole number of dust from 1 to {MAX_AMOUNT}")
    return amount


def check_account(state: SessionState, account: object, label: str) -> str:
    """An account that exists: the treasury or an attached agent."""
    if account == TREASURY:
        return TREASURY
    if not isinstance(account, str) or account not in state.agents:
        raise UnknownAgent(f"{label}: no attached agent {account!r} (or {TREASURY!r})")
    return account


def check_prices(prices: object) -> dict[str, int]:
    """A valid price table: dotted action keys to dust (0 makes an action free)."""
    if not isinstance(prices, Mapping):
        raise InvalidCommand("prices must be a map of action names to whole numbers of dust")
    if len(prices) > MAX_PRICES:
        raise InvalidCommand(f"a price table has at most {MAX_PRICES} entries")
    table = {}
    for key, price in prices.items():
        if not isinstance(key, str) or len(key) > 128 or not _PRICE_KEY.fullmatch(key):
            raise InvalidCommand(f"price keys are dotted action names, got {key!r}")
        if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_AMOUNT:
            raise InvalidCommand(f"prices[{key!r}] must be a whole number from 0 to {MAX_AMOUNT}")
        table[key] = price
    return table


def deposit(state: SessionState, account: object, amount: object, memo: str) -> list[Event]:
    """Create dust in ``account``."""
    return [DustDeposited(check_account(state, account, "account"), check_amount(amount), memo)]


def grant(
    state: SessionState, source: object, target: object, amount: object, memo: str
) -> list[Event]:
    """Move dust from ``source`` to ``target``; the source must hold it."""
    source = check_account(state, source, "source")
    target = check_account(state, target, "target")
    amount = check_amount(amount)
    if source == target:
        raise InvalidCommand("a grant moves dust between two different accounts")
    held = state.balance(source)
    if held < amount:
        raise InsufficientDust(
            f"{source} holds {held} dust, cannot grant {amount}",
            event=ChargeRefused(source, amount, held, "dust.grant", "GrantDust"),
        )
    return [DustGranted(source, target, amount, memo)]


def set_prices(prices: object) -> list[Event]:
    """Replace the price table."""
    return [PricesChanged(check_prices(prices))]


def charge(
    state: SessionState, payer: str, amount: int, action: str, command: str, reference: str = ""
) -> list[Event]:
    """The ``DustCharged`` for ``amount`` (none if 0), or ``InsufficientDust``."""
    if amount <= 0:
        return []
    held = state.balance(payer)
    if held < amount:
        raise InsufficientDust(
            f"{payer} holds {held} dust; {action} costs {amount}",
            event=ChargeRefused(payer, amount, held, action, command),
        )
    return [DustCharged(payer, amount, action, reference)]
