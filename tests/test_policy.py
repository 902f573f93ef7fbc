"""Policy evaluation: deny wins, default deny, wildcards, conditions, validation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet.errors import InvalidPolicy
from plantangenet.policy import (
    Condition,
    Policy,
    Statement,
    _wildcard_matches,
    parse_statement,
    parse_statements,
    pattern_matches,
)


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
    assert not policy.evaluate([], "read", "axis.t", {}).allowed  # missing key: condition false
    assert not policy.evaluate([], "read", "axis.t", {"hour": "ten"}).allowed  # wrong type: false
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
