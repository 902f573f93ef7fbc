"""Policy: statements that decide what each agent may do, and why.

A :class:`Policy` is a versioned set of :class:`Statement` s. Each statement
has an id, the roles it applies to (empty: every role), an effect (``allow``
or ``deny``), actions and resources (dotted patterns), and optional
:class:`Condition` s on the request's context. :meth:`Policy.evaluate` returns
a :class:`Decision` naming the statement that decided and why:

* a statement *applies* when the agent holds one of its roles (or it names
  none), an action pattern and a resource pattern match, and every condition
  holds;
* an applying ``deny`` wins over any applying ``allow``;
* if no ``allow`` applies, the answer is no (default deny).

Patterns are dotted names. ``*`` matches exactly one segment, except as the
last segment, where it matches one or more: ``axis.*`` matches
``axis.temperature`` and ``axis.ocean.temp``; ``*`` matches everything;
``cursor.*.move`` matches ``cursor.c1.move`` only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from plantangenet.disclosure import DENIED, FULL, RANK, Disclosure, parse_disclosure
from plantangenet.errors import InvalidPolicy

Effect = Literal["allow", "deny"]
ConditionOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"]

EFFECTS: frozenset[str] = frozenset({"allow", "deny"})
OPS: frozenset[str] = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+|\*")
_ROLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_STATEMENTS = 10_000

#: Scalars a condition compares against.
ConditionValue = str | int | float | bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """``context[key] <op> value``; a missing key makes the condition false."""

    key: str
    op: ConditionOp
    value: ConditionValue | tuple[ConditionValue, ...]

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Whether the condition is true in ``context``."""
        if self.key not in context:
            return False
        actual = context[self.key]
        expected = self.value
        try:
            match self.op:
                case "eq":
                    return bool(actual == expected)
                case "ne":
                    return bool(actual != expected)
                case "lt":
                    return bool(actual < expected)
                case "le":
                    return bool(actual <= expected)
                case "gt":
                    return bool(actual > expected)
                case "ge":
                    return bool(actual >= expected)
                case "in":
                    return isinstance(expected, tuple) and actual in expected
                case "not_in":
                    return isinstance(expected, tuple) and actual not in expected
        except TypeError:  # comparing a string with a number: the condition does not hold
            return False
        return False

    def describe(self) -> str:
        """E.g. ``hour ge 9``."""
        return f"{self.key} {self.op} {self.value!r}"


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """One rule of a policy."""

    id: str
    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    roles: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    #: What an ``allow`` discloses of data queried under it (``None``: everything).
    disclosure: Disclosure | None = None

    def matches(self, roles: Iterable[str], action: str, resource: str) -> bool:
        """Whether roles, action and resource fit (conditions not considered)."""
        if self.roles and not any(role in self.roles for role in roles):
            return False
        return any(pattern_matches(p, action) for p in self.actions) and any(
            pattern_matches(p, resource) for p in self.resources
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a request against a policy."""

    allowed: bool
    #: The statement that decided (``None`` for default deny or the session owner).
    statement_id: str | None
    reason: str
    policy_version: int
    action: str = ""
    resource: str = ""


@dataclasses.dataclass(frozen=True)
class Policy:
    """A versioned set of statements. Version 0 is the empty default-deny policy."""

    statements: tuple[Statement, ...] = ()
    version: int = 0
    #: For each role, the statements that can apply to it (its own and the
    #: role-less ones), in policy order: evaluation skips the rest.
    _by_role: dict[str, tuple[Statement, ...]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _any_role: tuple[Statement, ...] = dataclasses.field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_role: dict[str, list[Statement]] = {}
        any_role = []
        for statement in self.statements:
            if not statement.roles:
                any_role.append(statement)
                for listed in by_role.values():
                    listed.append(statement)
                continue
            for role in dict.fromkeys(statement.roles):
                if role not in by_role:
                    by_role[role] = list(any_role)
                by_role[role].append(statement)
        object.__setattr__(self, "_by_role", {r: tuple(v) for r, v in by_role.items()})
        object.__setattr__(self, "_any_role", tuple(any_role))

    def candidates(self, roles: Sequence[str]) -> Sequence[Statement]:
        """The statements that may apply to an agent holding ``roles``, in policy order."""
        if len(roles) == 1:
            return self._by_role.get(roles[0], self._any_role)
        if not roles:
            return self._any_role
        order = {id(s): i for i, s in enumerate(self.statements)}
        merged = {id(s): s for role in roles for s in self._by_role.get(role, ())}
        for statement in self._any_role:
            merged[id(statement)] = statement
        return sorted(merged.values(), key=lambda s: order[id(s)])

    def evaluate(
        self,
        roles: Iterable[str],
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide whether an agent holding ``roles`` may do ``action`` on ``resource``."""
        return self._decide(tuple(roles), action, resource, context or {}, widest=False)[0]

    def disclose(
        self,
        roles: Iterable[str],
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[Decision, Disclosure]:
        """Like :meth:`evaluate`, also saying how much an allowed query discloses.

        A deny still wins. Among the allowing statements that apply, the one that
        discloses most decides (allows add up; to disclose less, narrow the
        allows or add a deny); a statement without a disclosure discloses
        everything. A refusal comes with the ``denied`` disclosure.
        """
        decision, statement = self._decide(tuple(roles), action, resource, context or {}, True)
        if not decision.allowed or statement is None:
            return decision, DENIED
        return decision, statement.disclosure or FULL

    def _decide(
        self,
        roles: tuple[str, ...],
        action: str,
        resource: str,
        context: Mapping[str, Any],
        widest: bool,
    ) -> tuple[Decision, Statement | None]:
        allow: Statement | None = None
        for statement in self.candidates(roles):
            if not statement.matches(roles, action, resource):
                continue
            if not all(c.holds(context) for c in statement.conditions):
                continue
            if statement.effect == "deny":
                reason = f"denied by statement {statement.id!r}"
                return Decision(
                    False, statement.id, reason, self.version, action, resource
                ), statement
            if allow is None or (widest and _rank(statement) > _rank(allow)):
                allow = statement
        if allow is not None:
            reason = f"allowed by statement {allow.id!r}"
            return Decision(True, allow.id, reason, self.version, action, resource), allow
        reason = f"no statement allows {action} on {resource} (default deny)"
        return Decision(False, None, reason, self.version, action, resource), None


def _rank(statement: Statement) -> int:
    return RANK[(statement.disclosure or FULL).level]


def evaluate(
    policy: Policy,
    roles: Iterable[str],
    action: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """:meth:`Policy.evaluate` as a function."""
    return policy.evaluate(roles, action, resource, context)


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether dotted ``name`` matches dotted ``pattern`` (see the module docs)."""
    if pattern == "*":
        return True
    if "*" not in pattern:
        return pattern == name
    return _wildcard_matches(pattern, name)


#: Bounded: a session's names (axes, agents, cursors) are open-ended, so a long-running
#: service keeps only the recent pairs (the soak found a 65,536-entry cache at ~13 MiB).
@functools.lru_cache(maxsize=4096)
def _wildcard_matches(pattern: str, name: str) -> bool:
    want = pattern.split(".")
    have = name.split(".")
    last = len(want) - 1
    for i, segment in enumerate(want):
        if i >= len(have):
            return False
        if segment == "*":
            if i == last:
                return True
            continue
        if segment != have[i]:
            return False
    return len(have) == len(want)


# -- validation: policy documents from callers ------------------------------------------


def check_pattern(pattern: object, label: str) -> str:
    """``pattern`` if it is a valid dotted pattern, else :class:`InvalidPolicy`."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 256:
        raise InvalidPolicy(f"{label}: a pattern must be a non-empty string, got {pattern!r}")
    for segment in pattern.split("."):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidPolicy(
                f"{label}: bad pattern {pattern!r} (dotted words or '*' segments expected)"
            )
    return pattern


def check_role(role: object, label: str = "role") -> str:
    """``role`` if it is a valid role name, else :class:`InvalidPolicy`."""
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        raise InvalidPolicy(f"{label}: a role is 1-64 letters, digits, '_' or '-', got {role!r}")
    return role


def _patterns(value: object, label: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidPolicy(f"{label}: must be a non-empty list of patterns")
    return tuple(check_pattern(p, f"{label}[{i}]") for i, p in enumerate(value))


def _condition(raw: object, label: str) -> Condition:
    if isinstance(raw, Condition):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, Mapping):
        raise InvalidPolicy(f"{label}: a condition is a map with key, op and value")
    unknown = set(raw) - {"key", "op", "value"}
    if unknown:
        raise InvalidPolicy(f"{label}: unknown field {sorted(unknown)[0]!r}")
    key, op, value = raw.get("key"), raw.get("op"), raw.get("value")
    if not isinstance(key, str) or not key:
        raise InvalidPolicy(f"{label}.key: must be a non-empty string")
    if not isinstance(op, str) or op not in OPS:
        raise InvalidPolicy(f"{label}.op: unknown operator {op!r} (one of {sorted(OPS)})")
    if op in ("in", "not_in"):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise InvalidPolicy(f"{label}.value: '{op}' needs a list")
        value = tuple(_scalar(v, f"{label}.value") for v in value)
    else:
        value = _scalar(value, f"{label}.value")
    return Condition(key, cast(ConditionOp, op), value)


def _scalar(value: object, label: str) -> ConditionValue:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise InvalidPolicy(f"{label}: must be a string, number, boolean or null")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidPolicy(f"{label}: must be a finite number")
    return value


def parse_statement(raw: object, label: str = "statement") -> Statement:
    """A :class:`Statement` from a mapping (or a statement), validated.

    :raises InvalidPolicy: naming the offending field.
    """
    if isinstance(raw, Statement):
        raw = {
            "id": raw.id,
            "effect": raw.effect,
            "actions": raw.actions,
            "resources": raw.resources,
            "roles": raw.roles,
            "conditions": raw.conditions,
            "disclosure": raw.disclosure,
        }
    if not isinstance(raw, Mapping):
        raise InvalidPolicy(f"{label}: a statement is a map")
    unknown = set(raw) - {
        "id",
        "effect",
        "actions",
        "resources",
        "roles",
        "conditions",
        "disclosure",
    }
    if unknown:
        raise InvalidPolicy(f"{label}: unknown field {sorted(unknown)[0]!r}")
    sid = raw.get("id")
    if not isinstance(sid, str) or not _ROLE.fullmatch(sid):
        raise InvalidPolicy(f"{label}.id: 1-64 letters, digits, '_' or '-', got {sid!r}")
    label = f"statement {sid!r}"
    effect = raw.get("effect")
    if not isinstance(effect, str) or effect not in EFFECTS:
        raise InvalidPolicy(f"{label}.effect: must be 'allow' or 'deny', got {effect!r}")
    roles = raw.get("roles", ())
    if isinstance(roles, str) or not isinstance(roles, Sequence):
        raise InvalidPolicy(f"{label}.roles: must be a list (empty: every role)")
    conditions = raw.get("conditions", ())
    if isinstance(conditions, str | Mapping) or not isinstance(conditions, Sequence):
        raise InvalidPolicy(f"{label}.conditions: must be a list")
    disclosure = raw.get("disclosure")
    if disclosure is not None:
        if effect == "deny":
            raise InvalidPolicy(f"{label}.disclosure: only an 'allow' discloses")
        disclosure = parse_disclosure(disclosure, f"{label}.disclosure")
    return Statement(
        id=sid,
        effect=cast(Effect, effect),
        actions=_patterns(raw.get("actions"), f"{label}.actions"),
        resources=_patterns(raw.get("resources"), f"{label}.resources"),
        roles=tuple(check_role(r, f"{label}.roles") for r in roles),
        conditions=tuple(
            _condition(c, f"{label}.conditions[{i}]") for i, c in enumerate(conditions)
        ),
        disclosure=disclosure,
    )


def parse_statements(raw: object) -> tuple[Statement, ...]:
    """Validate a list of statements (ids must be unique)."""
    if isinstance(raw, str | Mapping) or not isinstance(raw, Sequence):
        raise InvalidPolicy("a policy is a list of statements")
    if len(raw) > MAX_STATEMENTS:
        raise InvalidPolicy(f"a policy has at most {MAX_STATEMENTS} statements")
    statements = tuple(parse_statement(s, f"statement[{i}]") for i, s in enumerate(raw))
    ids = [s.id for s in statements]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InvalidPolicy(f"statement id {duplicates[0]!r} is used twice")
    return statements
