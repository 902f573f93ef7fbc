"""Chems between two sessions on a real log: negotiation, asymmetric terms, revocation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import pytest

from plantangenet import (
    TREASURY,
    AccessRefused,
    ChemInactive,
    ChemProposed,
    DisclosureMade,
    InsufficientDust,
    InvalidCommand,
    Plantangenet,
    SyntheticCompositor,
    UnknownChem,
)

# The harbour discloses sea temperature rounded, for 2 dust per axis; the fleet
# discloses wind in full, for free. Each side's clauses are its own.
TERMS: list[Mapping[str, Any]] = [
    {
        "discloser": "harbour",
        "axes": ["ocean.*"],
        "disclosure": {"level": "degraded", "decimals": 0},
        "price": 2,
    },
    {"discloser": "fleet", "axes": ["wind.*"], "disclosure": "full"},
]


class Ask(TypedDict):
    """The keyword arguments every chem query below shares."""

    compositor: str


ASK: Ask = {"compositor": "synthetic"}


@pytest.fixture
def sides(runtime: Plantangenet) -> Plantangenet:
    runtime.add_compositor(SyntheticCompositor())
    for session_id, agent in (("harbour", "pilot"), ("fleet", "skipper")):
        session = runtime.session(session_id)
        session.start()
        session.register_compositor("synthetic")
        session.attach(agent)
        session.deposit(agent, 10)
    return runtime


def active(runtime: Plantangenet) -> None:
    runtime.chems.propose("harbour", "fleet", TERMS, chem_id="k1")
    runtime.chems.accept("fleet", "k1")


def test_negotiation_is_recorded_by_both_sessions(sides: Plantangenet) -> None:
    chems = sides.chems
    proposed = chems.propose("harbour", "fleet", TERMS[:1], chem_id="k1")
    assert (proposed.status, proposed.round, proposed.proposed_by) == ("proposed", 1, "harbour")
    with pytest.raises(InvalidCommand, match="own proposal"):
        chems.accept("harbour", "k1")
    with pytest.raises(InvalidCommand, match="last proposal"):
        chems.counter("harbour", "k1", TERMS)
    countered = chems.counter("fleet", "k1", TERMS)
    assert (countered.round, countered.proposed_by) == (2, "fleet")
    accepted = chems.accept("harbour", "k1")
    assert accepted.status == "active"
    for session_id, peer in (("harbour", "fleet"), ("fleet", "harbour")):
        view = sides.session(session_id).state.chems["k1"]
        assert (view.peer, view.status, view.round) == (peer, "active", 2)
        assert len(view.terms) == 2
        kinds = [
            type(e.event).__name__
            for e in sides.history(session_id)
            if "Chem" in type(e.event).__name__
        ]
        assert kinds == ["ChemProposed", "ChemProposed", "ChemAccepted"]
    with pytest.raises(ChemInactive):
        chems.counter("fleet", "k1", TERMS)


def test_refusal_ends_the_negotiation(sides: Plantangenet) -> None:
    sides.chems.propose("harbour", "fleet", TERMS, chem_id="k2")
    refused = sides.chems.refuse("fleet", "k2", "too dear")
    assert refused.status == "refused"
    assert sides.session("fleet").state.chems["k2"].status == "refused"
    with pytest.raises(ChemInactive):
        sides.chems.accept("fleet", "k2")
    with pytest.raises(ChemInactive):
        sides.chems.query("fleet", "skipper", "k2", ["ocean.temperature"], 0, 3, **ASK)


def test_terms_apply_asymmetrically(sides: Plantangenet) -> None:
    active(sides)
    # The fleet's skipper asks the harbour for the sea: degraded (rounded), 2 dust.
    sea = sides.chems.query("fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, **ASK)
    assert sea.level == "degraded" and sea.price == 2
    raw = SyntheticCompositor().query(sea_region := _region("ocean.temperature"))
    assert [s.value for s in sea.samples] == [round(s.value or 0, 0) for s in raw]
    assert sea_region.axes == ("ocean.temperature",)
    # The harbour's pilot asks the fleet for wind: full, free.
    wind = sides.chems.query("harbour", "pilot", "k1", ["wind.speed"], 0, 3, **ASK)
    assert wind.level == "full" and wind.price == 0
    assert list(wind.samples) == SyntheticCompositor().query(_region("wind.speed"))
    # Neither side gets what the other does not disclose.
    with pytest.raises(InvalidCommand, match="does not disclose"):
        sides.chems.query("fleet", "skipper", "k1", ["wind.speed"], 0, 3, **ASK)
    with pytest.raises(InvalidCommand, match="does not disclose"):
        sides.chems.query("harbour", "pilot", "k1", ["ocean.temperature"], 0, 3, **ASK)
    # Each side recorded its half: the asking side the charge, the disclosing side the disclosure.
    fleet = sides.session("fleet").state
    assert (fleet.balances["skipper"], fleet.balances[TREASURY]) == (8, 2)
    made = [e.event for e in sides.history("harbour") if isinstance(e.event, DisclosureMade)]
    assert [(m.chem_id, m.peer, m.agent_id, m.level, m.amount) for m in made] == [
        ("k1", "fleet", "skipper", "degraded", 4)
    ]


def test_insufficient_dust_asks_the_peer_nothing(sides: Plantangenet) -> None:
    active(sides)
    with pytest.raises(InsufficientDust):
        sides.chems.query(
            "fleet", "skipper", "k1", [f"ocean.a{n}" for n in range(6)], 0, 1, **ASK
        )  # 6 axes at 2 dust: 12 > 10
    assert not any(isinstance(e.event, DisclosureMade) for e in sides.history("harbour"))


@pytest.mark.parametrize("revoker", ["harbour", "fleet"])
def test_a_revoked_chem_refuses_the_next_query(sides: Plantangenet, revoker: str) -> None:
    active(sides)
    sides.chems.query("fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, **ASK)
    sides.chems.revoke(revoker, "k1", "season over")
    with pytest.raises(ChemInactive):
        sides.chems.query("fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, **ASK)
    with pytest.raises(ChemInactive):
        sides.chems.query("harbour", "pilot", "k1", ["wind.speed"], 0, 3, **ASK)
    assert sides.session("fleet").state.balances["skipper"] == 8  # charged for the first only


def test_revocation_on_the_disclosing_side_alone_stops_disclosure_and_refunds(
    sides: Plantangenet,
) -> None:
    active(sides)
    # Only the harbour has recorded the revocation (the fleet's write has not happened).
    from plantangenet import RevokeChem

    step = RevokeChem(command_id="revoke-k1", chem_id="k1", revoked_by="harbour")
    sides.session("harbour").execute(step)
    assert sides.session("fleet").state.chems["k1"].status == "active"
    with pytest.raises(ChemInactive):
        sides.chems.query("fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, **ASK)
    fleet = sides.session("fleet").state
    # Charged, then refunded from the fleet's treasury: no dust lost.
    assert (fleet.balances["skipper"], fleet.balances.get(TREASURY, 0)) == (10, 0)
    assert not any(isinstance(e.event, DisclosureMade) for e in sides.history("harbour"))
    # The same revoke step, retried through the coordinator, completes the peer's side.
    sides.chems.revoke("harbour", "k1", command_id="revoke-k1")
    assert sides.session("fleet").state.chems["k1"].status == "revoked"


def test_policy_governs_who_may_query_a_chem(sides: Plantangenet) -> None:
    active(sides)
    fleet = sides.session("fleet")
    fleet.attach("deckhand")
    with pytest.raises(AccessRefused):
        sides.chems.query(
            "fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, issued_by="skipper", **ASK
        )
    fleet.change_policy(
        replace=[
            {"id": "chem", "effect": "allow", "actions": ["chem.query"], "resources": ["chem.k1"]}
        ]
    )
    answer = sides.chems.query(
        "fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, issued_by="skipper", **ASK
    )
    assert answer.samples
    with pytest.raises(AccessRefused):  # another agent's dust needs agent.<owner> too
        sides.chems.query(
            "fleet", "skipper", "k1", ["ocean.temperature"], 0, 3, issued_by="deckhand", **ASK
        )


def test_bad_terms_and_unknown_chems_are_typed_errors(sides: Plantangenet) -> None:
    bad_terms: list[list[Mapping[str, Any]]] = [
        [],
        [{"discloser": "elsewhere", "axes": ["x"]}],
        [{"discloser": "harbour", "axes": []}],
        [{"discloser": "harbour", "axes": ["x"], "price": -1}],
        [{"discloser": "harbour", "axes": ["x"], "disclosure": "denied"}],
        [{"discloser": "harbour", "axes": ["x"], "colour": "red"}],
    ]
    for terms in bad_terms:
        with pytest.raises(InvalidCommand):
            sides.chems.propose("harbour", "fleet", terms, chem_id="bad")
    with pytest.raises(InvalidCommand):
        sides.chems.propose("harbour", "harbour", TERMS, chem_id="self")
    with pytest.raises(UnknownChem):
        sides.chems.accept("fleet", "nope")
    assert not any(isinstance(e.event, ChemProposed) for e in sides.history("harbour"))


def _region(axis: str):  # type: ignore[no-untyped-def]
    from plantangenet import Region

    return Region((axis,), 0.0, 3.0)
