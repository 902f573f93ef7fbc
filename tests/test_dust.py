"""Dust on a real log: balances never go negative, the ledger reconciles, replay equals live."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    TREASURY,
    DisclosureMade,
    DustGranted,
    InsufficientDust,
    InvalidCommand,
    Ledger,
    LedgerError,
    Plantangenet,
    SyntheticCompositor,
    UnknownAgent,
)
from plantangenet.cli import main
from tests.conftest import log_options

AGENTS = ["a", "b", "c"]
ACCOUNTS = [*AGENTS, TREASURY]
PRICES = {"cursor.move": 3, "cursor.query": 2, "cursor.query.full": 4}
_ids = itertools.count()

operations = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), st.integers(1, 20)),
        st.tuples(
            st.just("grant"),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(ACCOUNTS),
            st.integers(1, 30),
        ),
        st.tuples(st.just("move"), st.sampled_from(AGENTS)),
        st.tuples(st.just("query"), st.sampled_from(AGENTS)),
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_random_deposits_and_charges_reconcile(runtime: Plantangenet, ops: list) -> None:  # type: ignore[type-arg]
    if "synthetic" not in runtime.compositors:
        runtime.add_compositor(SyntheticCompositor())
    session_id = f"dust-{next(_ids)}"
    session = runtime.session(session_id)
    session.start()
    live = Ledger()
    session.on_change(live.apply)
    session.register_compositor("synthetic")
    session.set_prices(PRICES)
    everyone = {"id": "all", "effect": "allow", "actions": ["cursor.query"], "resources": ["*"]}
    session.change_policy(replace=[everyone])
    for agent in AGENTS:
        session.attach(agent)
        session.add_cursor(agent, f"c-{agent}", ["ocean.temperature"], 0, 3)
    model = {account: 0 for account in ACCOUNTS}
    for op in ops:
        disclosed_before = _disclosures(runtime, session_id)
        match op:
            case ("deposit", account, amount):
                session.deposit(account, amount)
                model[account] += amount
            case ("grant", source, target, amount):
                if source == target:
                    with pytest.raises(InvalidCommand):
                        session.grant(source, target, amount)
                elif model[source] < amount:
                    with pytest.raises(InsufficientDust):
                        session.grant(source, target, amount)
                else:
                    session.grant(source, target, amount)
                    model[source] -= amount
                    model[target] += amount
            case ("move", agent):
                price = PRICES["cursor.move"]
                if model[agent] < price:
                    with pytest.raises(InsufficientDust):
                        session.move_cursor(agent, f"c-{agent}", ["ocean.temperature"], 1, 4)
                else:
                    session.move_cursor(agent, f"c-{agent}", ["ocean.temperature"], 1, 4)
                    model[agent] -= price
                    model[TREASURY] += price
            case ("query", agent):
                price = PRICES["cursor.query.full"]  # one axis at full
                if model[agent] < price:
                    with pytest.raises(InsufficientDust):
                        session.query_cursor(agent, f"c-{agent}", "synthetic")
                    # Nothing was disclosed for it.
                    assert _disclosures(runtime, session_id) == disclosed_before
                else:
                    result = session.query_cursor(agent, f"c-{agent}", "synthetic")
                    assert len(result.samples) > 0
                    model[agent] -= price
                    model[TREASURY] += price
        state = session.state
        assert all(v >= 0 for v in state.balances.values())
        assert {a: v for a, v in state.balances.items() if v} == {
            a: v for a, v in model.items() if v
        }
    live.check()
    replayed = runtime.ledger(session_id)  # folded from checked values (no envelopes)
    replayed.check()
    assert replayed.balances == live.balances
    assert replayed.movements == live.movements
    assert replayed.refusals == live.refusals
    assert replayed.deposited == live.deposited == sum(model.values())
    assert replayed.prices == live.prices == PRICES
    from_envelopes = Ledger.of(runtime.history(session_id))
    assert (from_envelopes.movements, from_envelopes.refusals) == (live.movements, live.refusals)
    assert from_envelopes.sequence == replayed.sequence == live.sequence
    runtime.stop_session(session_id)


def _disclosures(runtime: Plantangenet, session_id: str) -> int:
    return sum(isinstance(e.event, DisclosureMade) for e in runtime.history(session_id))


def test_the_ledger_check_catches_what_does_not_reconcile(runtime: Plantangenet) -> None:
    session = runtime.session("broken-ledger")
    session.start()
    session.attach("a")
    session.deposit("a", 10)
    session.grant("a", TREASURY, 4, memo="fee")
    ledger = runtime.ledger("broken-ledger")
    ledger.check()
    assert (ledger.balance("a"), ledger.treasury, ledger.deposited) == (6, 4, 10)
    assert [(m.kind, m.account, m.amount, m.counterparty) for m in ledger.movements] == [
        ("deposit", "a", 10, None),
        ("grant", "a", -4, TREASURY),
        ("grant", TREASURY, 4, "a"),
    ]
    ledger.balances["a"] += 1  # dust from nowhere
    with pytest.raises(LedgerError, match="deposits"):
        ledger.check()


def test_bad_dust_commands_are_refused_with_typed_errors(runtime: Plantangenet) -> None:
    session = runtime.session("dust-errors")
    session.start()
    session.attach("a")
    sequence = session.state.sequence
    bad: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: session.deposit("a", 0), InvalidCommand),
        (lambda: session.deposit("a", -5), InvalidCommand),
        (lambda: session.deposit("a", True), InvalidCommand),
        (lambda: session.deposit("a", 1.5), InvalidCommand),  # type: ignore[arg-type]
        (lambda: session.deposit("a", 2**60), InvalidCommand),
        (lambda: session.deposit("ghost", 5), UnknownAgent),
        (lambda: session.grant("a", "ghost", 5), UnknownAgent),
        (lambda: session.set_prices({"Not A Key": 1}), InvalidCommand),
        (lambda: session.set_prices({"cursor.move": -1}), InvalidCommand),
        (lambda: session.set_prices({"cursor.move": "1"}), InvalidCommand),  # type: ignore[dict-item]
    ]
    for call, error in bad:
        with pytest.raises(error):
            call()
    assert session.state.sequence == sequence  # nothing written
    with pytest.raises(InsufficientDust) as excinfo:
        session.grant("a", TREASURY, 1)
    assert excinfo.value.sequence == sequence + 1  # the refusal itself is recorded
    assert session.state.balances == {}


def test_leaving_and_ending_are_never_charged(runtime: Plantangenet) -> None:
    session = runtime.session("dust-free")
    session.start()
    session.attach("a")
    session.set_prices({"session.detach": 100, "session.end": 100, "cursor.add": 1})
    with pytest.raises(InsufficientDust):
        session.add_cursor("a", "c", ["x"], 0, 1)
    session.detach("a")  # free, though priced
    session.end()
    assert not any(isinstance(e.event, DustGranted) for e in runtime.history("dust-free"))


def test_cli_ledger_renders_balances_and_movements(
    runtime: Plantangenet, capsys: pytest.CaptureFixture[str]
) -> None:
    session = runtime.session("cli-ledger")
    session.start()
    session.attach("a")
    session.set_prices({"cursor.add": 2})
    session.deposit("a", 5, memo="welcome")
    session.add_cursor("a", "c1", ["ocean"], 0, 1)
    args = log_options(runtime)
    assert main(["ledger", "cli-ledger", *args]) == 0
    text = capsys.readouterr().out
    assert "a" in text and "3" in text and "welcome" in text and "cursor.add" in text
    assert main(["ledger", "cli-ledger", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["balances"] == {"a": 3, TREASURY: 2}
    assert data["deposited"] == 5 and data["reconciles"] is True
    assert [m["amount"] for m in data["movements"]] == [5, -2, 2]
