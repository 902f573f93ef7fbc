"""Policy and disclosure values: what events and projections carry.

The values a session's policy is made of (:class:`Statement`, :class:`Condition`,
:class:`Policy`, :class:`Decision`) and how much a query discloses (:class:`Disclosure`
and its levels) sit below events, which carry them (``PolicyChanged``, ``ChemClause``,
``CompositorRegistered``), and below projections, which hold them. A policy answers
for itself (:meth:`Policy.evaluate`, :meth:`Policy.disclose`); validating and parsing
policy documents from callers stays in :mod:`plantangenet.domain.policy`, shaping samples in
:mod:`plantangenet.domain.disclosure`. See :mod:`plantangenet.domain.policy` for the semantics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

Level = Literal["full", "degraded", "masked", "denied"]

LEVELS: tuple[Level, ...] = ("denied", "masked", "degraded", "full")

#: The finest resolution a degraded disclosure may ask for (time units per bucket).
MIN_RESOLUTION = 1e-9

#: How much each level discloses (higher discloses more).
RANK: Mapping[str, int] = {level: rank for rank, level in enumerate(LEVELS)}


@dataclasses.dataclass(frozen=True, slots=True)
class Disclosure:
    """What an allowing statement discloses (see the module docs)."""

    level: Level = "full"
    resolution: float | None = None
    decimals: int | None = None
    mask: tuple[str, ...] = ()

    def describe(self) -> str:
        """E.g. ``degraded (resolution 10, 1 decimals)``."""
        details = []
        if self.resolution is not None:
            details.append(f"resolution {self.resolution:g}")
        if self.decimals is not None:
            details.append(f"{self.decimals} decimals")
        if self.mask:
            details.append("mask " + ",".join(self.mask))
        return f"{self.level} ({', '.join(details)})" if details else self.level


FULL = Disclosure()

DENIED = Disclosure("denied")

Effect = Literal["allow", "deny"]

ConditionOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"]

#: The role that, in a statement's roles, stands for every agent (never a role an agent holds).
EVERY_ROLE = "*"

#: How much of an exception's message a reason quotes.
_MAX_ERROR = 200

#: Scalars a condition compares against.
ConditionValue = str | int | float | bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """``context[key] <op> value``, in three-valued logic (see :meth:`test`).

    ``in`` and ``not_in`` test membership in a tuple of values as Python's ``in``
    on a tuple does (``is`` or ``==``: the context value is never hashed).
    """

    key: str
    op: ConditionOp
    value: ConditionValue | tuple[ConditionValue, ...]

    def test(self, context: Mapping[str, Any]) -> bool | None:
        """``True`` or ``False``, or ``None`` if the condition cannot be evaluated.

        It cannot be evaluated when ``key`` is missing from ``context`` or when
        the comparison raises any exception (uncomparable types such as
        ``"a" < 5``; a value whose ``__eq__``, ``__lt__`` or ``__bool__``
        raises): context values come from callers. Never raises.
        """
        outcome = self._outcome(context)
        return outcome if isinstance(outcome, bool) else None

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Whether the condition is definitely true in ``context`` (:meth:`test` is ``True``)."""
        return self._outcome(context) is True

    def _outcome(self, context: Mapping[str, Any]) -> bool | str:
        """:meth:`test`, with in place of ``None`` why: ``missing``, or the exception raised."""
        try:
            if self.key not in context:
                return "missing"
            actual = context[self.key]
            expected = self.value
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
                case "in" if isinstance(expected, tuple):
                    return actual in expected
                case "not_in" if isinstance(expected, tuple):
                    return actual not in expected
                case "in" | "not_in":
                    return f"{self.op!r} needs a tuple of values"
            return f"unknown operator {self.op!r}"
        except Exception as exc:  # a caller's value: anything may raise
            return _error(exc)

    def describe(self) -> str:
        """E.g. ``hour ge 9``."""
        return f"{self.key} {self.op} {self.value!r}"


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """One rule of a policy.

    ``roles`` says whom it is for: no role, or the role ``*`` among them,
    means every agent (including one holding no role); otherwise the agents
    holding one of them. Its ``conditions`` combine with AND in Kleene logic
    (see :meth:`test`). A matching ``deny`` refuses unless a condition is
    definitely false; a matching ``allow`` grants only if every condition is
    definitely true (see the module docs).
    """

    id: str
    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    roles: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    #: What an ``allow`` discloses of data queried under it (``None``: everything).
    disclosure: Disclosure | None = None

    @property
    def for_every_role(self) -> bool:
        """Whether the statement is for every agent (no roles, or ``*`` among them)."""
        return not self.roles or EVERY_ROLE in self.roles

    def matches(self, roles: Iterable[str], action: str, resource: str) -> bool:
        """Whether roles, action and resource fit (conditions not considered)."""
        if not self.for_every_role and not any(role in self.roles for role in roles):
            return False
        return self._fits(action, resource)

    def test(self, context: Mapping[str, Any]) -> bool | None:
        """Its conditions combined with AND in Kleene logic.

        ``True`` if every condition is true (or it has none): the statement
        applies; ``False`` if one is false: it does not apply; otherwise
        ``None``: it is undecided (none is false, some cannot be evaluated).
        """
        outcome = self._outcome(context)
        return outcome if isinstance(outcome, bool) else None

    def _fits(self, action: str, resource: str) -> bool:
        # Plain loops: this runs for every statement a command's roles reach.
        for pattern in self.actions:
            if pattern_matches(pattern, action):
                break
        else:
            return False
        for pattern in self.resources:  # noqa: SIM110 (any() with a generator is slower)
            if pattern_matches(pattern, resource):
                return True
        return False

    def _outcome(self, context: Mapping[str, Any]) -> bool | str:
        """:meth:`test`, with for ``None`` the first condition that cannot be evaluated and why."""
        undecided: Condition | None = None
        why = ""
        for condition in self.conditions:
            outcome = condition._outcome(context)
            if outcome is True:
                continue
            if outcome is False:
                return False
            if undecided is None:
                undecided, why = condition, outcome
        if undecided is None:
            return True
        return f"condition {undecided.describe()!r} cannot be evaluated ({why})"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a request against a policy."""

    allowed: bool
    #: The statement that decided (``None`` for default deny, a failed evaluation or the
    #: session owner).
    statement_id: str | None
    reason: str
    policy_version: int
    action: str = ""
    resource: str = ""


@dataclasses.dataclass(frozen=True)
class Policy:
    """A versioned set of statements. Version 0 is the empty default-deny policy.

    Its only fields are ``statements`` and ``version``: the role index that
    evaluation uses is internal (not a field, so not in :func:`dataclasses.fields`,
    plain views, equality or ``repr``).
    """

    statements: tuple[Statement, ...] = ()
    version: int = 0

    @functools.cached_property
    def _any_role(self) -> tuple[Statement, ...]:
        """The statements for every agent (no roles, or ``*``), in policy order."""
        return tuple(s for s in self.statements if s.for_every_role)

    @functools.cached_property
    def _by_role(self) -> dict[str, tuple[Statement, ...]]:
        """For each role a statement names, the statements for an agent holding it.

        Its own and those for every agent, in policy order: evaluation skips the rest.
        """
        by_role: dict[str, list[Statement]] = {}
        every: list[Statement] = []
        for statement in self.statements:
            if statement.for_every_role:
                every.append(statement)
                for listed in by_role.values():
                    listed.append(statement)
                continue
            for role in dict.fromkeys(statement.roles):
                if role not in by_role:
                    by_role[role] = list(every)
                by_role[role].append(statement)
        return {r: tuple(v) for r, v in by_role.items()}

    def candidates(self, roles: Sequence[str]) -> Sequence[Statement]:
        """The statements for an agent holding ``roles``, in policy order.

        Those naming no role or ``*`` (every agent), and those naming one of ``roles``.
        """
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
        """Decide whether an agent holding ``roles`` may do ``action`` on ``resource``.

        Never raises: a failure while evaluating is a refusal naming it.
        """
        try:
            return self._decide(tuple(roles), action, resource, context or {}, False)[0]
        except Exception as exc:
            return _failed(self.version, action, resource, exc)

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
        everything. An undecided allow is never chosen. A refusal comes with the
        ``denied`` disclosure. Never raises.
        """
        try:
            decision, statement = self._decide(tuple(roles), action, resource, context or {}, True)
            if not decision.allowed or statement is None:
                return decision, DENIED
            return decision, statement.disclosure or FULL
        except Exception as exc:
            return _failed(self.version, action, resource, exc), DENIED

    def _decide(
        self,
        roles: tuple[str, ...],
        action: str,
        resource: str,
        context: Mapping[str, Any],
        widest: bool,
    ) -> tuple[Decision, Statement | None]:
        allow: Statement | None = None
        undecided = ""  # why the first undecided allow did not allow
        for statement in self.candidates(roles):  # all for these roles
            if not statement._fits(action, resource):
                continue
            applies = statement._outcome(context) if statement.conditions else True
            if applies is False:
                continue
            if statement.effect == "deny":
                reason = f"denied by statement {statement.id!r}"
                if applies is not True:
                    reason = f"{reason}: {applies}"
                return Decision(
                    False, statement.id, reason, self.version, action, resource
                ), statement
            if applies is not True:
                if not undecided:
                    undecided = f"; statement {statement.id!r} does not allow: {applies}"
                continue
            if allow is None or (widest and _rank(statement) > _rank(allow)):
                allow = statement
        if allow is not None:
            reason = f"allowed by statement {allow.id!r}"
            return Decision(True, allow.id, reason, self.version, action, resource), allow
        reason = f"no statement allows {action} on {resource} (default deny){undecided}"
        return Decision(False, None, reason, self.version, action, resource), None


def _rank(statement: Statement) -> int:
    return RANK[(statement.disclosure or FULL).level]


def _error(exc: BaseException) -> str:
    """``exc`` as ``TypeError: ...`` (bounded; its message may be hostile too)."""
    name = type(exc).__name__
    try:
        message = str(exc)
        if len(message) > _MAX_ERROR:
            message = message[:_MAX_ERROR] + "..."
        return f"{name}: {message}" if message else name
    except Exception:
        return name


def _failed(version: int, action: object, resource: object, exc: Exception) -> Decision:
    """The refusal for an evaluation that failed with ``exc``."""
    action = action if isinstance(action, str) else ""
    resource = resource if isinstance(resource, str) else ""
    reason = f"refused: the policy could not be evaluated ({_error(exc)})"
    return Decision(False, None, reason, version, action, resource)


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
