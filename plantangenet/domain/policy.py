"""Policy: statements that decide what each agent may do, and why.

A :class:`Policy` is a versioned set of :class:`Statement` s. Each statement
has an id, the roles it applies to, an effect (``allow`` or ``deny``),
actions and resources (dotted patterns), and optional :class:`Condition` s on
the request's context. :meth:`Policy.evaluate` returns a :class:`Decision`
naming the statement that decided and why. The engine fails closed:

* a statement *matches* a request when it is for the agent (it names no role,
  names the role ``*``, or names a role the agent holds; ``*`` and no role
  both mean every agent, including one holding no role), an action pattern
  matches the action and a resource pattern matches the resource;
* each condition is *true*, *false* or *unknown*: unknown when it cannot be
  evaluated, because its key is missing from the context or the comparison
  raises (any exception: ``"a" < 5``, or a caller's value whose ``__eq__``,
  ``__lt__`` or ``__bool__`` raises). A statement's conditions combine with
  AND in Kleene logic: if any is false the statement does *not apply*; if all
  are true (or it has none) it *applies*; otherwise it is *undecided*;
* a matching ``deny`` that applies or is undecided refuses, and wins over any
  ``allow``; the reason of an undecided one names the condition that could
  not be evaluated and why;
* a matching ``allow`` grants only if it applies: an undecided one grants
  nothing;
* if no ``allow`` applies, the answer is no (default deny);
* any other failure while evaluating is a refusal too: :meth:`Policy.evaluate`,
  :meth:`Policy.disclose` and :func:`evaluate` never raise (``Exception``
  subclasses; ``KeyboardInterrupt``, ``SystemExit`` and cancellation still
  propagate).

Patterns are dotted names. ``*`` matches exactly one segment, except as the
last segment, where it matches one or more: ``axis.*`` matches
``axis.temperature`` and ``axis.ocean.temp``; ``*`` matches everything;
``cursor.*.move`` matches ``cursor.c1.move`` only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from plantangenet.domain.disclosure import parse_disclosure
from plantangenet.errors import InvalidPolicy
from plantangenet.events.policy_values import EVERY_ROLE as EVERY_ROLE
from plantangenet.events.policy_values import Condition as Condition
from plantangenet.events.policy_values import ConditionOp as ConditionOp
from plantangenet.events.policy_values import ConditionValue as ConditionValue
from plantangenet.events.policy_values import Decision as Decision
from plantangenet.events.policy_values import Effect as Effect
from plantangenet.events.policy_values import Policy as Policy
from plantangenet.events.policy_values import Statement as Statement
from plantangenet.events.policy_values import _failed
from plantangenet.events.policy_values import pattern_matches as pattern_matches

EFFECTS: frozenset[str] = frozenset({"allow", "deny"})
OPS: frozenset[str] = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+|\*")
_ROLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_STATEMENTS = 10_000
#: Limits of what a condition stores: its key, a string value, the values of in/not_in.
MAX_CONDITION_KEY = 256
MAX_CONDITION_TEXT = 1024
MAX_CONDITION_VALUES = 256


def evaluate(
    policy: Policy,
    roles: Iterable[str],
    action: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """:meth:`Policy.evaluate` as a function (never raises either)."""
    try:
        return policy.evaluate(roles, action, resource, context)
    except Exception as exc:  # not a Policy, or one whose evaluate was replaced
        version = policy.version if isinstance(policy, Policy) else 0
        return _failed(version, action, resource, exc)


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
    """``role`` if it is a valid role name (one an agent may hold), else :class:`InvalidPolicy`.

    ``*`` is not a role name: it only stands for every agent in a statement's roles
    (see :func:`check_statement_role`).
    """
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        raise InvalidPolicy(f"{label}: a role is 1-64 letters, digits, '_' or '-', got {role!r}")
    return role


def check_statement_role(role: object, label: str = "role") -> str:
    """``role`` if it may be listed in a statement's roles, else :class:`InvalidPolicy`.

    A valid role name (:func:`check_role`), or exactly ``*``: every agent.
    """
    if not isinstance(role, str) or (role != EVERY_ROLE and not _ROLE.fullmatch(role)):
        raise InvalidPolicy(
            f"{label}: a role is 1-64 letters, digits, '_' or '-', or '*' for every agent, "
            f"got {role!r}"
        )
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
    if not isinstance(key, str) or not key or len(key) > MAX_CONDITION_KEY:
        raise InvalidPolicy(f"{label}.key: must be a string of 1-{MAX_CONDITION_KEY} characters")
    if not isinstance(op, str) or op not in OPS:
        raise InvalidPolicy(f"{label}.op: unknown operator {op!r} (one of {sorted(OPS)})")
    if op in ("in", "not_in"):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise InvalidPolicy(f"{label}.value: '{op}' needs a list")
        if len(value) > MAX_CONDITION_VALUES:
            raise InvalidPolicy(f"{label}.value: at most {MAX_CONDITION_VALUES} values")
        value = tuple(_scalar(v, f"{label}.value") for v in value)
    else:
        value = _scalar(value, f"{label}.value")
    return Condition(key, cast(ConditionOp, op), value)


def _scalar(value: object, label: str) -> ConditionValue:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise InvalidPolicy(f"{label}: must be a string, number, boolean or null")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidPolicy(f"{label}: must be a finite number")
    if isinstance(value, str) and len(value) > MAX_CONDITION_TEXT:
        raise InvalidPolicy(f"{label}: at most {MAX_CONDITION_TEXT} characters")
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
        raise InvalidPolicy(f"{label}.roles: must be a list (empty or '*': every role)")
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
        roles=tuple(check_statement_role(r, f"{label}.roles") for r in roles),
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
    seen: set[str] = set()
    duplicates: set[str] = set()
    for statement in statements:  # (not ``ids.count``: quadratic in a bot's policy)
        if statement.id in seen:
            duplicates.add(statement.id)
        seen.add(statement.id)
    if duplicates:
        raise InvalidPolicy(f"statement id {min(duplicates)!r} is used twice")
    return statements
