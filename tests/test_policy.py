"""Policy evaluation: deny wins, default deny, wildcards, conditions, validation, failing closed."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet.domain.disclosure import DENIED, Disclosure
from plantangenet.domain.policy import (
    Condition,
    ConditionOp,
    ConditionValue,
    Decision,
    Policy,
    Statement,
    check_role,
    check_statement_role,
    evaluate,
    parse_statement,
    parse_statements,
    pattern_matches,
)
from plantangenet.errors import InvalidPolicy
from plantangenet.events.policy_values import _wildcard_matches


def allow(
    sid: str,
    actions: tuple[str, ...],
    resources: tuple[str, ...],
    roles: tuple[str, ...] = (),
    **kw: object,
) -> Statement:
    return Statement(sid, "allow", actions, resources, roles, **kw)  # type: ignore[arg-type]


def deny(
    sid: str,
    actions: tuple[str, ...],
    resources: tuple[str, ...],
    roles: tuple[str, ...] = (),
    **kw: object,
) -> Statement:
    return Statement(sid, "deny", actions, resources, roles, **kw)  # type: ignore[arg-type]


def test_deny_overrides_allow_for_the_same_request() -> None:
    for order in ((0, 1), (1, 0)):
        statements = (
            allow("a", ("read",), ("axis.*",), ("analyst",)),
            deny("d", ("read",), ("axis.secret",), ("analyst",)),
        )
        policy = Policy(tuple(statements[i] for i in order), version=3)
        decision = policy.evaluate(["analyst"], "read", "axis.secret")
        assert not decision.allowed
        assert decision.statement_id == "d" and decision.policy_version == 3
        assert "denied by statement 'd'" in decision.reason
        assert policy.evaluate(["analyst"], "read", "axis.public").statement_id == "a"


def test_default_deny() -> None:
    decision = Policy().evaluate(["admin"], "read", "axis.x")
    assert not decision.allowed and decision.statement_id is None
    assert "default deny" in decision.reason
    policy = Policy((allow("a", ("read",), ("axis.x",), ("analyst",)),), 1)
    assert not policy.evaluate(["viewer"], "read", "axis.x").allowed  # role does not match
    assert not policy.evaluate(["analyst"], "write", "axis.x").allowed  # action does not match
    assert policy.evaluate(["viewer", "analyst"], "read", "axis.x").allowed


def test_statement_without_roles_applies_to_everyone() -> None:
    policy = Policy((allow("all", ("read",), ("*",)),), 1)
    assert policy.evaluate([], "read", "anything.at.all").allowed


def test_false_conditions_make_a_statement_not_apply() -> None:
    office_hours = allow(
        "office",
        ("read",),
        ("axis.*",),
        conditions=(Condition("hour", "ge", 9), Condition("hour", "lt", 17)),
    )
    night_block = deny("night", ("read",), ("axis.*",), conditions=(Condition("hour", "ge", 22),))
    policy = Policy((office_hours, night_block), 1)
    assert policy.evaluate([], "read", "axis.t", {"hour": 10}).allowed
    assert not policy.evaluate([], "read", "axis.t", {"hour": 18}).allowed  # allow does not apply
    assert policy.evaluate([], "read", "axis.t", {"hour": 18}).statement_id is None
    assert policy.evaluate([], "read", "axis.t", {"hour": 23}).statement_id == "night"
    # missing key, wrong type: the conditions cannot be evaluated, so the deny denies
    for context in ({}, {"hour": "ten"}):
        decision = policy.evaluate([], "read", "axis.t", context)
        assert not decision.allowed and decision.statement_id == "night"
        assert "condition 'hour ge 22' cannot be evaluated" in decision.reason
    tiers = Policy(
        (
            allow(
                "gold",
                ("read",),
                ("*",),
                conditions=(Condition("identity.tier", "in", ("gold", "platinum")),),
            ),
        ),
        1,
    )
    assert tiers.evaluate([], "read", "x", {"identity.tier": "gold"}).allowed
    assert not tiers.evaluate([], "read", "x", {"identity.tier": "silver"}).allowed


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "axis", True),
        ("*", "axis.temperature.max", True),
        ("axis.*", "axis.temperature", True),
        ("axis.*", "axis.ocean.temperature", True),
        ("axis.*", "axis", False),
        ("axis.*", "axes.temperature", False),
        ("cursor.*.move", "cursor.c1.move", True),
        ("cursor.*.move", "cursor.c1.c2.move", False),
        ("axis.temperature", "axis.temperature", True),
        ("axis.temperature", "axis.temperature.max", False),
        ("axis.temperature", "axis", False),
    ],
)
def test_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


# -- property tests against a small reference model ------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "c", "axis", "x1"])
NAMES = st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.lists(st.one_of(SEGMENTS, st.just("*")), min_size=1, max_size=4).map(".".join)


def reference_match(pattern: str, name: str) -> bool:
    """Regex model: '*' is one segment, a trailing '*' one or more."""
    parts = pattern.split(".")
    regex = []
    for i, part in enumerate(parts):
        if part == "*":
            regex.append(r"[^.]+(\.[^.]+)*" if i == len(parts) - 1 else r"[^.]+")
        else:
            regex.append(re.escape(part))
    return re.fullmatch(r"\.".join(regex), name) is not None


@given(PATTERNS, NAMES)
def test_wildcards_agree_with_the_reference_model(pattern: str, name: str) -> None:
    assert pattern_matches(pattern, name) == reference_match(pattern, name)


ROLES = st.sampled_from(["r1", "r2", "r3"])
STATEMENTS = st.builds(
    lambda i, effect, actions, resources, roles: Statement(
        f"s{i}", effect, tuple(actions), tuple(resources), tuple(roles)
    ),
    st.integers(0, 10_000),
    st.sampled_from(["allow", "deny"]),
    st.lists(PATTERNS, min_size=1, max_size=2),
    st.lists(PATTERNS, min_size=1, max_size=2),
    st.lists(ROLES, max_size=2),
)


def reference_decision(
    statements: list[Statement], roles: list[str], action: str, resource: str
) -> bool:
    applying = [
        s
        for s in statements
        if (not s.roles or set(s.roles) & set(roles))
        and any(reference_match(p, action) for p in s.actions)
        and any(reference_match(p, resource) for p in s.resources)
    ]
    return bool(applying) and all(s.effect == "allow" for s in applying)


@settings(max_examples=300)
@given(
    st.lists(STATEMENTS, max_size=8, unique_by=lambda s: s.id),
    st.lists(ROLES, max_size=3),
    NAMES,
    NAMES,
)
def test_decisions_agree_with_the_reference_model(
    statements: list[Statement], roles: list[str], action: str, resource: str
) -> None:
    decision = Policy(tuple(statements), 7).evaluate(roles, action, resource)
    assert decision.allowed == reference_decision(statements, roles, action, resource)
    assert decision.policy_version == 7
    if decision.statement_id is not None:
        deciding = next(s for s in statements if s.id == decision.statement_id)
        assert deciding.effect == ("allow" if decision.allowed else "deny")


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"id": "s", "effect": "maybe", "actions": ["read"], "resources": ["*"]}, "effect"),
        ({"id": "s", "effect": "allow", "actions": [], "resources": ["*"]}, "actions"),
        ({"id": "s", "effect": "allow", "actions": "read", "resources": ["*"]}, "actions"),
        (
            {"id": "s", "effect": "allow", "actions": ["read"], "resources": ["axis..x"]},
            "resources",
        ),
        ({"id": "s", "effect": "allow", "actions": ["re ad"], "resources": ["*"]}, "actions"),
        ({"id": "s", "effect": "allow", "actions": ["read"], "resources": ["ax*s"]}, "resources"),
        (
            {
                "id": "s",
                "effect": "allow",
                "actions": ["read"],
                "resources": ["*"],
                "roles": ["a b"],
            },
            "roles",
        ),
        (
            {"id": "s", "effect": "allow", "actions": ["read"], "resources": ["*"], "extra": 1},
            "extra",
        ),
        ({"id": "", "effect": "allow", "actions": ["read"], "resources": ["*"]}, "id"),
        (
            {
                "id": "s",
                "effect": "allow",
                "actions": ["read"],
                "resources": ["*"],
                "conditions": [{"key": "hour", "op": "between", "value": 1}],
            },
            "op",
        ),
        (
            {
                "id": "s",
                "effect": "allow",
                "actions": ["read"],
                "resources": ["*"],
                "conditions": [{"key": "hour", "op": "in", "value": 1}],
            },
            "value",
        ),
        (
            {
                "id": "s",
                "effect": "allow",
                "actions": ["read"],
                "resources": ["*"],
                "conditions": [{"key": "hour", "op": "eq", "value": {"x": 1}}],
            },
            "value",
        ),
        ("not a statement", "map"),
    ],
)
def test_malformed_statements_are_rejected_with_a_clear_error(
    document: object, message: str
) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        parse_statement(document)


def test_statement_ids_must_be_unique_and_documents_lists() -> None:
    s = {"id": "s", "effect": "allow", "actions": ["read"], "resources": ["*"]}
    with pytest.raises(InvalidPolicy, match="used twice"):
        parse_statements([s, s])
    b, a = {**s, "id": "b"}, {**s, "id": "a"}
    with pytest.raises(InvalidPolicy, match="statement id 'a' is used twice"):
        parse_statements([b, a, b, a])  # the first in order of ids, as always
    with pytest.raises(InvalidPolicy, match="list of statements"):
        parse_statements(s)
    parsed = parse_statements(
        [s, {**s, "id": "t", "conditions": [{"key": "k", "op": "in", "value": ["a"]}]}]
    )
    assert parsed[1].conditions == (Condition("k", "in", ("a",)),)
    assert parse_statement(parsed[1]) == parsed[1]


def test_only_wildcard_patterns_are_cached_and_the_cache_is_bounded() -> None:
    # Names are open-ended (new cursors, agents, axes): a long-running service must not
    # remember every pair it has seen. Exact patterns and "*" need no cache at all.
    _wildcard_matches.cache_clear()
    assert pattern_matches("*", "cursor.c1")
    assert pattern_matches("cursor.c1", "cursor.c1")
    assert not pattern_matches("cursor.c1", "cursor.c2")
    assert _wildcard_matches.cache_info().currsize == 0
    bound = _wildcard_matches.cache_info().maxsize
    assert bound is not None and bound <= 4096
    for i in range(bound + 100):
        assert pattern_matches("cursor.*", f"cursor.c{i}")
    assert _wildcard_matches.cache_info().currsize == bound


# -- failing closed: conditions that cannot be evaluated ----------------------------------


class RaisingEq:
    """A caller's value whose ``==`` (so also ``!=`` and ``in``) raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refused")

    __hash__ = object.__hash__


class RaisingLt:
    """A caller's value whose ``<`` raises (and that has no other ordering)."""

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("lt refused")


class RaisingHash:
    """A caller's value that cannot be hashed; equal to ``equal_to`` only."""

    def __init__(self, equal_to: object = None) -> None:
        self.equal_to = equal_to

    def __eq__(self, other: object) -> bool:
        return self.equal_to is not None and bool(other == self.equal_to)

    def __hash__(self) -> int:
        raise RuntimeError("hash refused")


class Unbool:
    """A result that has no truth value."""

    def __bool__(self) -> bool:
        raise RuntimeError("bool refused")


class EqUnbool:
    """A caller's value whose ``==`` answers something without a truth value."""

    def __eq__(self, other: object) -> Any:
        return Unbool()

    __hash__ = object.__hash__


class NastyError(Exception):
    """An exception that cannot even say what it is about."""

    def __str__(self) -> str:
        raise RuntimeError("no message either")


class RaisingNasty:
    """A caller's value whose ``==`` raises :class:`NastyError`."""

    def __eq__(self, other: object) -> bool:
        raise NastyError

    __hash__ = object.__hash__


class RaisingLookups(Mapping[str, Any]):
    """A context of one key that no lookup reaches."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no lookup")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        return 1


class Unsized(RaisingLookups):
    """A context that cannot even say whether it is empty."""

    def __len__(self) -> int:
        raise RuntimeError("no length")


def guarded(*conditions: Condition) -> Policy:
    """A deny of ``cursor.move`` under ``conditions``, then an allow of everything."""
    return Policy(
        (
            deny("guard", ("cursor.move",), ("*",), conditions=conditions),
            allow("everything", ("*",), ("*",)),
        ),
        1,
    )


def test_a_deny_whose_key_is_missing_denies() -> None:
    policy = guarded(Condition("resolution", "lt", 5))
    decision = policy.evaluate(["viewer"], "cursor.move", "cursor.c1", {})
    assert not decision.allowed and decision.statement_id == "guard"
    assert decision.reason == (
        "denied by statement 'guard': condition 'resolution lt 5' cannot be evaluated (missing)"
    )
    assert policy.evaluate(["viewer"], "cursor.move", "cursor.c1", None).statement_id == "guard"
    decision = policy.evaluate(["viewer"], "cursor.move", "cursor.c1", {"resolution": 2})
    assert decision.statement_id == "guard" and decision.reason == "denied by statement 'guard'"
    decision = policy.evaluate(["viewer"], "cursor.move", "cursor.c1", {"resolution": 10})
    assert decision.allowed and decision.statement_id == "everything"
    assert Condition("resolution", "lt", 5).test({}) is None
    assert Condition("resolution", "lt", 5).holds({}) is False


def test_an_allow_whose_key_is_missing_does_not_allow() -> None:
    office = allow("office", ("read",), ("*",), conditions=(Condition("hour", "ge", 9),))
    policy = Policy((office,), 1)
    decision = policy.evaluate([], "read", "axis.t", {"minute": 0})
    assert not decision.allowed and decision.statement_id is None
    assert "(default deny)" in decision.reason
    assert (
        "statement 'office' does not allow: condition 'hour ge 9' cannot be evaluated (missing)"
        in decision.reason
    )
    assert policy.evaluate([], "read", "axis.t", {"hour": 9}).allowed
    assert not policy.evaluate([], "read", "axis.t", {"hour": 8}).allowed


def test_a_deny_comparing_uncomparable_types_denies() -> None:
    policy = guarded(Condition("resolution", "lt", 5))
    decision = policy.evaluate([], "cursor.move", "cursor.c1", {"resolution": "a"})
    assert not decision.allowed and decision.statement_id == "guard"
    assert (
        "condition 'resolution lt 5' cannot be evaluated (TypeError: '<' not supported"
        in decision.reason
    )
    fine = allow("fine", ("*",), ("*",), conditions=(Condition("resolution", "ge", 5),))
    assert not Policy((fine,), 1).evaluate([], "cursor.move", "c1", {"resolution": "a"}).allowed


@pytest.mark.parametrize(
    ("value", "condition", "error"),
    [
        pytest.param(RaisingEq(), Condition("v", "eq", 5), "RuntimeError: eq refused", id="eq"),
        pytest.param(RaisingEq(), Condition("v", "ne", 5), "RuntimeError: eq refused", id="ne"),
        pytest.param(RaisingEq(), Condition("v", "in", (1, 5)), "RuntimeError: eq", id="in"),
        pytest.param(RaisingEq(), Condition("v", "not_in", (1,)), "RuntimeError: eq", id="not_in"),
        pytest.param(RaisingLt(), Condition("v", "lt", 5), "RuntimeError: lt refused", id="lt"),
        pytest.param(RaisingLt(), Condition("v", "ge", 5), "TypeError: '>=' not", id="ge"),
        pytest.param(EqUnbool(), Condition("v", "eq", 5), "RuntimeError: bool", id="eq-bool"),
        pytest.param(EqUnbool(), Condition("v", "in", (5,)), "RuntimeError: bool", id="in-bool"),
        pytest.param(RaisingNasty(), Condition("v", "eq", 5), "(NastyError)", id="nasty-error"),
    ],
)
def test_a_deny_on_a_value_whose_comparison_raises_denies(
    value: object, condition: Condition, error: str
) -> None:
    decision = guarded(condition).evaluate([], "cursor.move", "cursor.c1", {"v": value})
    assert not decision.allowed and decision.statement_id == "guard"
    assert f"condition {condition.describe()!r} cannot be evaluated (" in decision.reason
    assert error in decision.reason
    assert condition.test({"v": value}) is None and condition.holds({"v": value}) is False
    maybe = Policy((allow("maybe", ("*",), ("*",), conditions=(condition,)),), 1)
    decision = maybe.evaluate([], "cursor.move", "cursor.c1", {"v": value})
    assert not decision.allowed and decision.statement_id is None


def test_membership_compares_by_equality_and_never_hashes_the_value() -> None:
    # ``in`` over a condition's values is Python's ``in`` on a tuple (``is`` or ``==``): a
    # value that cannot be hashed (a hostile __hash__, a caller's list) is decided as ``==``
    # decides it, not made undecided by a hash the test never needs.
    policy = guarded(Condition("tier", "in", ("blocked", "banned")))
    for value in (RaisingHash(), ["banned"], RaisingHash(equal_to="gold")):
        decision = policy.evaluate([], "cursor.move", "cursor.c1", {"tier": value})
        assert decision.allowed and decision.statement_id == "everything", value
    decision = policy.evaluate([], "cursor.move", "c1", {"tier": RaisingHash(equal_to="banned")})
    assert decision.statement_id == "guard" and decision.reason == "denied by statement 'guard'"
    assert Condition("tier", "not_in", ("banned",)).test({"tier": RaisingHash()}) is True
    assert Condition("tier", "in", ("banned",)).test({"tier": RaisingHash("banned")}) is True


def test_conditions_combine_with_and_in_kleene_logic() -> None:
    context = {"hour": 12}
    false, true = Condition("hour", "lt", 0), Condition("hour", "ge", 0)
    unknown = Condition("minute", "eq", 0)  # missing
    cases: list[tuple[tuple[Condition, ...], bool | None]] = [
        ((false, unknown), False),
        ((unknown, false), False),
        ((true, unknown), None),
        ((unknown, true), None),
        ((unknown, unknown), None),
        ((true, true), True),
        ((), True),
    ]
    for conditions, expected in cases:
        assert deny("d", ("*",), ("*",), conditions=conditions).test(context) is expected
        decision = guarded(*conditions).evaluate([], "cursor.move", "cursor.c1", context)
        assert decision.allowed is (expected is False), conditions
        if expected is None:
            assert "condition 'minute eq 0' cannot be evaluated (missing)" in decision.reason
        elif expected:
            assert decision.reason == "denied by statement 'guard'"
        only_allow = Policy((allow("a", ("*",), ("*",), conditions=conditions),), 1)
        assert only_allow.evaluate([], "cursor.move", "c1", context).allowed is (expected is True)


def test_disclose_fails_closed_too() -> None:
    wide = allow("wide", ("query",), ("axis.*",), conditions=(Condition("clearance", "ge", 3),))
    narrow = allow("narrow", ("query",), ("axis.*",), disclosure=Disclosure("masked"))
    policy = Policy((wide, narrow), 1)
    decision, disclosure = policy.disclose([], "query", "axis.t", {"clearance": 5})
    assert decision.statement_id == "wide" and disclosure.level == "full"
    contexts: list[dict[str, object]] = [{}, {"clearance": "top"}, {"clearance": RaisingLt()}]
    for context in contexts:
        # the wider allow is undecided: it is not chosen, the narrower one decides
        decision, disclosure = policy.disclose([], "query", "axis.t", context)
        assert decision.allowed and decision.statement_id == "narrow", context
        assert disclosure.level == "masked"
    guard = deny(
        "guard", ("query",), ("axis.secret",), conditions=(Condition("clearance", "lt", 3),)
    )
    guarded_policy = Policy((wide, narrow, guard), 2)
    contexts = [{}, {"clearance": "top"}, {"clearance": RaisingEq()}]
    for context in contexts:
        decision, disclosure = guarded_policy.disclose([], "query", "axis.secret", context)
        assert not decision.allowed and decision.statement_id == "guard", context
        assert "cannot be evaluated" in decision.reason and disclosure == DENIED
    decision, disclosure = guarded_policy.disclose([], "query", "axis.secret", {"clearance": 5})
    assert decision.statement_id == "wide" and disclosure.level == "full"


def test_nothing_escapes_evaluate_disclose_or_the_function() -> None:
    policy = guarded(Condition("resolution", "lt", 5))
    wildcard = Policy((allow("cursors", ("cursor.*",), ("*",)),), 3)
    bad: Any = None
    unhashable: Any = []
    refusals = [
        policy.evaluate(bad, "cursor.move", "cursor.c1"),  # roles not iterable
        policy.evaluate(
            ["r1", unhashable], "cursor.move", "cursor.c1"
        ),  # a role that cannot be hashed
        wildcard.evaluate([], ["cursor", "move"], "cursor.c1"),  # type: ignore[arg-type]
        policy.evaluate([], "cursor.move", "cursor.c1", Unsized()),
        policy.disclose(bad, "cursor.move", "cursor.c1")[0],
        wildcard.disclose([], ["cursor"], "cursor.c1")[0],  # type: ignore[arg-type]
        evaluate(bad, [], "cursor.move", "cursor.c1"),
        evaluate(wildcard, [], ["cursor", "move"], "cursor.c1"),  # type: ignore[arg-type]
    ]
    for decision in refusals:
        assert not decision.allowed and decision.statement_id is None, decision
        assert decision.reason.startswith("refused: the policy could not be evaluated ("), decision
    assert "TypeError: unhashable type: 'list'" in refusals[2].reason
    assert refusals[2].action == "" and refusals[2].resource == "cursor.c1"
    assert "AttributeError" in refusals[6].reason and refusals[6].policy_version == 0
    assert refusals[7].policy_version == 3
    assert wildcard.disclose([], ["cursor"], "cursor.c1")[1] == DENIED  # type: ignore[arg-type]
    # a context whose lookups raise: the conditions cannot be evaluated, the deny denies
    decision = policy.evaluate([], "cursor.move", "cursor.c1", RaisingLookups())
    assert decision.statement_id == "guard"
    assert "cannot be evaluated (RuntimeError: no lookup)" in decision.reason
    assert Condition("k", "eq", 1).test(RaisingLookups()) is None


# -- roles: "*" is every agent ------------------------------------------------------------


def test_star_role_is_for_every_agent_even_one_holding_no_role() -> None:
    every = allow("every", ("read",), ("*",), ("*",))
    ops = allow("ops", ("write",), ("*",), ("ops",))
    policy = Policy((every, ops), 1)
    for roles in ([], ["viewer"], ["ops"], ["viewer", "ops"], ["a", "b", "c"]):
        decision = policy.evaluate(roles, "read", "axis.t")
        assert decision.allowed and decision.statement_id == "every", roles
        assert every.matches(roles, "read", "axis.t")
    assert not policy.evaluate(["viewer"], "write", "axis.t").allowed  # a named role restricts
    assert not ops.matches([], "write", "axis.t")
    mixed = Policy((allow("mixed", ("read",), ("*",), ("ops", "*")),), 1)
    assert mixed.evaluate([], "read", "x").allowed and mixed.evaluate(["ops"], "read", "x").allowed


def test_star_is_a_statement_role_but_never_a_role_an_agent_holds() -> None:
    with pytest.raises(InvalidPolicy):
        check_role("*")
    assert check_statement_role("*") == "*" and check_statement_role("ops") == "ops"
    s = {"id": "s", "effect": "allow", "actions": ["read"], "resources": ["*"]}
    assert parse_statement({**s, "roles": ["*"]}).roles == ("*",)
    assert parse_statement({**s, "roles": ["ops", "*"]}).roles == ("ops", "*")
    for bad in ("a*", "**", "*.x", " *", "", 1, None):
        with pytest.raises(InvalidPolicy, match="roles"):
            parse_statement({**s, "roles": [bad]})
        with pytest.raises(InvalidPolicy):
            check_statement_role(bad)


def test_the_role_index_keeps_policy_order_across_star_roleless_and_role_statements() -> None:
    a = allow("a", ("read",), ("*",), ("r1",))
    star = deny("star", ("read",), ("x.*",), ("*",))
    none = allow("none", ("read",), ("*",))
    r2 = deny("r2", ("read",), ("x.*",), ("r2",))
    star2 = allow("star2", ("read",), ("*",), ("*", "r1"))
    policy = Policy((a, star, none, r2, star2), 1)
    assert list(policy.candidates(["r1"])) == [a, star, none, star2]
    assert list(policy.candidates(["r2"])) == [star, none, r2, star2]
    assert list(policy.candidates([])) == [star, none, star2]
    assert list(policy.candidates(["r3"])) == [star, none, star2]
    assert list(policy.candidates(["r2", "r1"])) == [a, star, none, r2, star2]
    # the first deny in policy order decides, whatever roles it names
    assert Policy((r2, star), 1).evaluate(["r2"], "read", "x.y").statement_id == "r2"
    assert Policy((star, r2), 1).evaluate(["r2"], "read", "x.y").statement_id == "star"
    # a deny for every agent wins over a role's allow before or after it
    for statements in ((a, star), (star, a)):
        ordered = Policy(statements, 1)
        assert ordered.evaluate(["r1"], "read", "x.y").statement_id == "star"
        assert ordered.evaluate([], "read", "x.y").statement_id == "star"
        assert ordered.evaluate(["r1"], "read", "z").statement_id == "a"
        assert not ordered.evaluate([], "read", "z").allowed


def test_the_role_index_is_not_public_data() -> None:
    policy = Policy((allow("a", ("read",), ("*",), ("r1",)), allow("b", ("read",), ("*",))), 4)
    assert policy.evaluate(["r1"], "read", "x").allowed  # the index is built
    assert [f.name for f in dataclasses.fields(policy)] == ["statements", "version"]
    assert set(dataclasses.asdict(policy)) == {"statements", "version"}
    assert "_by_role" not in repr(policy) and "_any_role" not in repr(policy)
    fresh = Policy(policy.statements, 4)
    assert policy == fresh and hash(policy) == hash(fresh)


# -- property: failing closed, against an independent reference evaluator ----------------

# Few actions, resources and keys, so that statements often match and conditions often meet
# (the wildcards themselves are checked above).
VERBS = st.sampled_from(["read", "write"])
VERB_PATTERNS = st.sampled_from(["read", "write", "*"])
OBJECTS = st.sampled_from(["a", "a.b", "c"])
OBJECT_PATTERNS = st.sampled_from(["a", "a.*", "c", "*"])
KEYS = st.sampled_from(["k1", "k2"])
SCALARS: st.SearchStrategy[ConditionValue] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([-1.5, 0.0, 2.5]),
    st.sampled_from(["", "a", "b"]),
)
COMPARISONS: list[ConditionOp] = ["eq", "ne", "lt", "le", "gt", "ge"]
MEMBERSHIPS: list[ConditionOp] = ["in", "not_in"]
CONDITIONS = st.one_of(
    st.builds(Condition, KEYS, st.sampled_from(COMPARISONS), SCALARS),
    st.builds(
        Condition, KEYS, st.sampled_from(MEMBERSHIPS), st.lists(SCALARS, max_size=3).map(tuple)
    ),
)
RULES = st.builds(
    lambda i, effect, actions, resources, roles, conditions: Statement(
        f"s{i}", effect, tuple(actions), tuple(resources), tuple(roles), tuple(conditions)
    ),
    st.integers(0, 10_000),
    st.sampled_from(["allow", "deny"]),
    st.lists(VERB_PATTERNS, min_size=1, max_size=2),
    st.lists(OBJECT_PATTERNS, min_size=1, max_size=2),
    st.lists(st.sampled_from(["r1", "r2", "r3", "*"]), max_size=2),
    st.lists(CONDITIONS, max_size=3),
)
CONTEXT_VALUES: st.SearchStrategy[object] = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=2),
    st.builds(RaisingEq),
    st.builds(RaisingLt),
    st.builds(RaisingHash),
    st.builds(EqUnbool),
    st.builds(RaisingNasty),
)
CONTEXTS = st.dictionaries(KEYS, CONTEXT_VALUES, max_size=2)

COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def reference_condition(condition: Condition, context: Mapping[str, object]) -> bool | None:
    """True, False, or None when the key is missing or Python's operator raises."""
    if condition.key not in context:
        return None
    actual = context[condition.key]
    try:
        if condition.op in ("in", "not_in"):
            assert isinstance(condition.value, tuple)
            found = any(v is actual or bool(v == actual) for v in condition.value)
            return found if condition.op == "in" else not found
        return bool(COMPARE[condition.op](actual, condition.value))
    except Exception:
        return None


def reference_applies(statement: Statement, context: Mapping[str, object]) -> bool | None:
    """Kleene AND of the conditions: any False is False, all True is True, else None."""
    values = [reference_condition(c, context) for c in statement.conditions]
    if any(v is False for v in values):
        return False
    return True if all(v is True for v in values) else None


def reference_outcome(
    statements: list[Statement],
    roles: list[str],
    action: str,
    resource: str,
    context: Mapping[str, object],
) -> tuple[bool, str | None]:
    """(allowed, deciding statement id): the first deny not definitely off, else the first
    allow definitely on, else default deny."""
    matching = [
        s
        for s in statements
        if (not s.roles or "*" in s.roles or set(s.roles) & set(roles))
        and any(reference_match(p, action) for p in s.actions)
        and any(reference_match(p, resource) for p in s.resources)
    ]
    for s in matching:
        if s.effect == "deny" and reference_applies(s, context) is not False:
            return False, s.id
    for s in matching:
        if s.effect == "allow" and reference_applies(s, context) is True:
            return True, s.id
    return False, None


@settings(max_examples=500, deadline=None)
@given(
    st.lists(RULES, max_size=8, unique_by=lambda s: s.id),
    st.lists(ROLES, max_size=3),
    VERBS,
    OBJECTS,
    CONTEXTS,
)
def test_decisions_fail_closed_like_the_reference_evaluator(
    statements: list[Statement],
    roles: list[str],
    action: str,
    resource: str,
    context: dict[str, object],
) -> None:
    policy = Policy(tuple(statements), 9)
    decision = policy.evaluate(roles, action, resource, context)  # never raises
    assert isinstance(decision, Decision)
    allowed, statement_id = reference_outcome(statements, roles, action, resource, context)
    assert (decision.allowed, decision.statement_id) == (allowed, statement_id)
    assert decision.policy_version == 9
    if statement_id is not None and not allowed:
        deciding = next(s for s in statements if s.id == statement_id)
        undecided = reference_applies(deciding, context) is None
        assert ("cannot be evaluated" in decision.reason) is undecided, decision.reason
    disclosed, disclosure = policy.disclose(roles, action, resource, context)
    assert disclosed.allowed is allowed
    assert (disclosure == DENIED) is not allowed
    if not allowed:
        assert disclosed.statement_id == statement_id


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"key": "k" * 257, "op": "eq", "value": 1}, "key"),
        ({"key": "k", "op": "eq", "value": "v" * 1025}, "at most 1024"),
        ({"key": "k", "op": "in", "value": list(range(257))}, "at most 256 values"),
        ({"key": "k", "op": "in", "value": ["v" * 1025]}, "at most 1024"),
    ],
    ids=["long key", "long value", "too many values", "long listed value"],
)
def test_what_a_condition_stores_has_limits(condition: dict[str, object], message: str) -> None:
    statement = {
        "id": "s",
        "effect": "deny",
        "actions": ["*"],
        "resources": ["*"],
        "conditions": [condition],
    }
    with pytest.raises(InvalidPolicy, match=message):
        parse_statement(statement)
    ok = {**condition, "key": "k"}
    if isinstance(ok["value"], str):
        ok["value"] = "v" * 1024
    elif isinstance(ok["value"], list):
        ok["value"] = ["v"] * 256
    parse_statement({**statement, "conditions": [ok]})  # at the limits: accepted
