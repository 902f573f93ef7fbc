"""The dust ledger: balances and the movements behind them.

A fold of the dust events. Every movement is a double entry (what one
account loses another gains), except deposits, which create dust; so at any
point of the log the balances sum to the dust deposited, each balance is the
sum of its account's movements, and no balance is negative. :meth:`Ledger.check`
verifies all three. Refused charges are listed too (they move nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from plantangenet.events.dust import (
    TREASURY,
    ChargeRefused,
    DustCharged,
    DustDeposited,
    DustGranted,
    PricesChanged,
    movements,
)
from plantangenet.events.envelope import CheckedEvent, Envelope

MovementKind = Literal["deposit", "grant", "charge"]


@dataclasses.dataclass(frozen=True, slots=True)
class Movement:
    """One side of one dust event: ``amount`` (signed) for ``account``."""

    sequence: int
    occurred_at: datetime
    kind: MovementKind
    account: str
    amount: int
    counterparty: str | None
    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A charge the account could not cover (nothing moved)."""

    sequence: int
    occurred_at: datetime
    account: str
    amount: int
    balance: int
    action: str


class LedgerError(AssertionError):
    """The ledger does not reconcile (a bug, or a log written by something else)."""


#: The dust events a ledger folds, by type name, and their fields.
_DUST: dict[str, type[Any]] = {
    cls.type_name: cls
    for cls in (DustDeposited, DustGranted, DustCharged, ChargeRefused, PricesChanged)
}
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _DUST.values()
}


class Ledger:
    """Balances, movements, refusals and the price table of one session."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.movements: list[Movement] = []
        self.refusals: list[Refusal] = []
        self.prices: dict[str, int] = {}
        self.deposited = 0
        self.sequence = 0

    @classmethod
    def of(cls, envelopes: Iterable[Envelope]) -> Ledger:
        """The ledger after folding ``envelopes``."""
        ledger = cls()
        for envelope in envelopes:
            ledger.apply(envelope)
        return ledger

    def apply(self, envelope: Envelope) -> None:
        """Fold one envelope in (non-dust events are ignored)."""
        self._apply(envelope.event, envelope.sequence, envelope.occurred_at)

    def apply_checked(self, checked: CheckedEvent) -> None:
        """:meth:`apply` for an event read as its checked values (no envelope built): a
        dust event's values make its event again; any other moves only the position."""
        cls = _DUST.get(checked.type_name)
        if cls is None:  # most of a long log
            self.sequence = checked.sequence or self.sequence
            return
        fields = checked.fields
        event = cls(**{name: getattr(fields, name) for name in _FIELDS[cls]})
        self._apply(event, checked.sequence, checked.occurred)

    def _apply(self, event: Any, sequence: int | None, at: datetime) -> None:
        sequence = sequence or self.sequence
        self.sequence = sequence
        match event:
            case DustDeposited(account=account, amount=amount, memo=memo):
                self.deposited += amount
                self._move(sequence, at, "deposit", {account: amount}, memo)
            case DustGranted(memo=memo):
                self._move(sequence, at, "grant", movements(event), memo)
            case DustCharged(action=action, reference=reference):
                note = f"{action} {reference}".strip()
                self._move(sequence, at, "charge", movements(event), note)
            case ChargeRefused(account=account, amount=amount, balance=balance, action=action):
                self.refusals.append(Refusal(sequence, at, account, amount, balance, action))
            case PricesChanged(prices=prices):
                self.prices = dict(prices)

    def _move(
        self,
        sequence: int,
        at: datetime,
        kind: MovementKind,
        changes: Mapping[str, int],
        note: str,
    ) -> None:
        accounts = list(changes)
        for account, amount in changes.items():
            self.balances[account] = self.balances.get(account, 0) + amount
            others = [a for a in accounts if a != account]
            counterparty = others[0] if others else None
            self.movements.append(Movement(sequence, at, kind, account, amount, counterparty, note))

    def balance(self, account: str) -> int:
        """What ``account`` holds."""
        return self.balances.get(account, 0)

    def movements_of(self, account: str) -> list[Movement]:
        """The movements of one account, oldest first."""
        return [m for m in self.movements if m.account == account]

    @property
    def treasury(self) -> int:
        """What the session's own account holds."""
        return self.balance(TREASURY)

    def check(self) -> None:
        """Raise :class:`LedgerError` unless the ledger reconciles (see the module docs)."""
        if sum(self.balances.values()) != self.deposited:
            raise LedgerError(
                f"balances sum to {sum(self.balances.values())}, deposits to {self.deposited}"
            )
        sums: dict[str, int] = {}
        for movement in self.movements:
            sums[movement.account] = sums.get(movement.account, 0) + movement.amount
        if {a: v for a, v in sums.items() if v} != {a: v for a, v in self.balances.items() if v}:
            raise LedgerError("balances differ from the sums of their movements")
        negative = sorted(a for a, v in self.balances.items() if v < 0)
        if negative:
            raise LedgerError(f"negative balance: {negative[0]} holds {self.balances[negative[0]]}")
