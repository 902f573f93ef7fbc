"""Coverage-guided fuzzing of the wire protocol's request parsing and every command handler.

An input is one of three kinds, chosen by its first byte:

* raw wire request (first byte < 0x80, bit 4 clear): a wire command name, a NUL byte,
  then the request payload for it (``decode_request``), decided in the fixed state chosen
  by the first byte's bits 5-6 (new, active, priced, ended);
* raw direct command (bit 4 set): a command class name (any in ``plantangenet.domain.commands``),
  a NUL, then a msgpack map of its fields, built as Python callers of the session actor
  build commands, decided the same way;
* structured (first byte >= 0x80): a ``FuzzedDataProvider`` builds one to four commands
  of any class, each from a valid template with a field or two fuzzed or with every field
  fuzzed, and sends them in turn to a fixed state: wire commands mostly as msgpack
  requests through ``decode_request``, the others (and some wire ones) directly. A data
  query's compositor answer (samples) is fuzzed too.

What must hold:

* ``decode_request`` returns a command of the named class or raises ``InvalidCommand``
  or ``DecodeError`` (as its docstring says), and the service's error reply for the
  failure encodes and decodes back to the same error code;
* ``decide`` accepts a command or raises a ``CommandRejected`` subclass, nothing else;
  a data query (``DataQuery``) is always refused by ``decide``, and ``plan_query`` then
  ``disclose`` (with fuzzed samples) raise only what the session actor turns into a typed
  reply (``CommandRejected``, ``CompositorFailed``, or ``TypeError``/``ValueError``/
  ``AttributeError`` for malformed samples), and disclose only planned axes;
* the events of an accepted command (or the ``AccessDenied``/``ChargeRefused`` a
  ``RecordedRefusal`` carries) encode (or are ``PayloadTooLarge``), decode to equal
  envelopes, and fold: the live state equals the state folded from the decoded events.

Run (see fuzz/README.md)::

    .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=300 /tmp/proto-corpus \
        fuzz/corpus/protocol
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from typing import Any

import atheris

with atheris.instrument_imports(include=["plantangenet", "msgpack"]):
    import fuzzlib
    import msgpack

    from plantangenet.data.disclose import disclose
    from plantangenet.domain import commands as c
    from plantangenet.domain.decide import DEFAULT_LIMITS, decide, decide_authorized, plan_query
    from plantangenet.domain.disclosure import Region, Sample
    from plantangenet.errors import (
        CommandRejected,
        CompositorFailed,
        DecodeError,
        InvalidCommand,
        PayloadTooLarge,
        PlantangenetError,
        RecordedRefusal,
    )
    from plantangenet.events import CODEC, Authorization
    from plantangenet.events.base import Event
    from plantangenet.projections.session import SessionState, evolve
    from plantangenet.wire.protocol import COMMANDS, decode_reply, decode_request, error_reply

WIRE_NAME = {cls: name for name, cls in COMMANDS.items()}
CLASSES = {cls.__name__: cls for cls in fuzzlib.COMMAND_CLASSES}
STATES = fuzzlib.STATES


def check_reply(exc: PlantangenetError) -> None:
    """The service's reply for ``exc`` encodes, and a client reads the same error back."""
    reply = error_reply(exc)
    assert isinstance(reply, bytes) and len(reply) < 64 * 1024, len(reply)
    try:
        decode_reply(reply)
    except PlantangenetError as back:
        assert back.code == exc.code, (back.code, exc.code)
    else:
        raise AssertionError("an error reply decoded as a success")


def parse(name: str, payload: bytes) -> c.Command | None:
    """``decode_request(name, payload)``: a command, or ``None`` for a typed refusal."""
    try:
        command = decode_request(name, payload)
    except (InvalidCommand, DecodeError) as exc:
        check_reply(exc)
        return None
    assert type(command) is COMMANDS[name], (name, command)
    return command


def step(state: SessionState, command: c.Command, now: datetime, v: fuzzlib.Values) -> SessionState:
    """Decide ``command`` in ``state`` and, if accepted, check and fold its events."""
    authorization = None
    try:
        if isinstance(command, c.DataQuery):
            authorization, events = query(state, command, now, v)
        else:
            authorization, events = decide_authorized(state, command, now=now)
    except RecordedRefusal as refused:  # the actor records the refusal's event
        check_reply(refused)
        authorization, events = None, [refused.event]
    except (CommandRejected, CompositorFailed) as rejected:
        check_reply(rejected)
        return state
    live = replayed = state
    for event in events:
        envelope = fuzzlib.envelope_of(live, command, event, authorization)
        authorization = None
        try:
            payload = CODEC.encode(envelope)
        except PayloadTooLarge:  # the actor refuses the whole command with this error
            return state
        decoded = CODEC.decode(payload, sequence=envelope.sequence)
        assert decoded == envelope, f"round trip changed the event:\n{envelope!r}\n{decoded!r}"
        live = evolve(live, envelope)
        replayed = evolve(replayed, decoded)
    assert live == replayed, f"live and replayed states differ after {command!r}"
    return live


def query(
    state: SessionState, command: c.DataQuery, now: datetime, v: fuzzlib.Values
) -> tuple[Authorization, list[Event]]:
    """A data query as the actor runs it: plan, fuzzed compositor answer, disclose."""
    try:
        decide(state, command, now=now)
    except CommandRejected:
        pass
    else:
        raise AssertionError(f"decide accepted a data query: {command!r}")
    authorization, plan = plan_query(state, command, now=now)
    answer = samples(v, plan.region)
    limit = v.pick([DEFAULT_LIMITS.max_samples_per_query, 2])
    try:
        disclosed = disclose(state, plan, answer, max_samples=limit)
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # the actor:
        # CompositorFailed
        raise CompositorFailed(f"bad data: {exc}") from None
    for sample in disclosed.samples:  # never more than was authorized
        assert plan.disclosure_of(sample.axis) is not None, (plan, sample)
    return authorization, list(disclosed.events)


def samples(v: fuzzlib.Values, region: Region) -> list[Sample]:
    """What a compositor might answer for ``region``: mostly on its axes, in its interval."""
    fdp = v.fdp
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        axis = v.pick(list(region.axes)) if fdp.ConsumeIntInRange(0, 3) else v.pick(fuzzlib.AXES)
        if fdp.ConsumeIntInRange(0, 3):
            time = region.start + fdp.ConsumeProbability() * (region.end - region.start)
        else:
            time = float(v.number())
        value = None if fdp.ConsumeIntInRange(0, 7) == 0 else float(v.number())
        fields = v.mapping(scalars=True) if fdp.ConsumeIntInRange(0, 3) == 0 else {}
        out.append(Sample(axis, time, value, fields))
    return out


def issuer(v: fuzzlib.Values) -> Any:
    return (
        v.pick([None, None, None, "a1", "a2", "a3", "a9", "s1", ""])
        if v.fdp.ConsumeIntInRange(0, 15)
        else v.any(1)
    )


def fields_for(v: fuzzlib.Values, cls: type[c.Command]) -> dict[str, Any]:
    """Fields of a ``cls`` command (and ``issued_by``).

    Half the time a valid template (``fuzzlib.TEMPLATES``) with up to two fields fuzzed
    or dropped, so deep paths stay reachable; otherwise every field fuzzed (a required
    one now and then missing).
    """
    fdp, hints = v.fdp, fuzzlib.HINTS[cls]
    template = fuzzlib.TEMPLATES.get(cls.__name__)
    if template is not None and fdp.ConsumeBool():
        out = dict(template[1])
        names = [f.name for f in fuzzlib.own_fields(cls)] + ["issued_by"]
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            name = v.pick(names)
            if name == "issued_by":
                out[name] = issuer(v)
            elif fdp.ConsumeIntInRange(0, 7) == 0:
                out.pop(name, None)
            else:
                out[name] = v.field(name, hints[name])
        return out
    out = {"issued_by": issuer(v)}
    for f in fuzzlib.own_fields(cls):
        if (fuzzlib.required(f) and fdp.ConsumeIntInRange(0, 15)) or fdp.ConsumeBool():
            out[f.name] = v.field(f.name, hints[f.name])
    return out


def request(v: fuzzlib.Values, fields: dict[str, Any]) -> bytes:
    """A msgpack request carrying ``fields``: mostly well-formed."""
    fdp = v.fdp
    args = {k: value for k, value in fields.items() if k != "issued_by"}
    if fdp.ConsumeIntInRange(0, 15) == 0:
        args[v.pick(fuzzlib.KEYS)] = v.any(1)
    raw: dict[Any, Any] = {"v": 1, "id": f"fz-{fdp.ConsumeIntInRange(0, 9)}", "args": args}
    by = fields.get("issued_by")
    if by is not None or fdp.ConsumeBool():
        raw["by"] = by
    if fdp.ConsumeIntInRange(0, 3) == 0:
        raw["corr"] = v.text() if fdp.ConsumeBool() else v.any(1)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        raw["ctx"] = v.mapping(scalars=True) if fdp.ConsumeBool() else v.any(1)
    if fdp.ConsumeIntInRange(0, 15) == 0:
        raw[v.pick(["v", "id", "by", "corr", "ctx", "args", "x"])] = v.any(1)
    packed: bytes = msgpack.packb(raw, use_bin_type=True)
    return packed


def direct(v: fuzzlib.Values, cls: type[c.Command], fields: dict[str, Any]) -> c.Command:
    """A command of ``cls`` built in Python, as callers of the session actor do."""
    fdp, hints = v.fdp, fuzzlib.HINTS[cls]
    values: dict[str, Any] = {}
    for f in fuzzlib.own_fields(cls):
        if f.name in fields or fuzzlib.required(f):
            value = fields[f.name] if f.name in fields else v.field(f.name, hints[f.name])
            if isinstance(value, list) and fdp.ConsumeBool():
                value = tuple(value)
            values[f.name] = value
    context = v.mapping(scalars=True) if fdp.ConsumeIntInRange(0, 3) == 0 else {}
    correlation = v.pick([None, "corr-1"])
    return cls(
        command_id="fz-d",
        issued_by=fields.get("issued_by"),
        correlation_id=correlation,
        context=context,
        **values,
    )


def structured(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    v = fuzzlib.Values(fdp)
    state = STATES[fdp.ConsumeIntInRange(0, len(STATES) - 1)]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        now = fuzzlib.now_of(fdp.ConsumeIntInRange(0, 200))
        cls = v.pick(fuzzlib.COMMAND_CLASSES)
        fields = fields_for(v, cls)
        name = WIRE_NAME.get(cls)
        if name is not None and fdp.ConsumeIntInRange(0, 3):
            command = parse(name, request(v, fields))
        else:
            command = direct(v, cls, fields)
        if command is not None:
            state = step(state, command, now, v)


def direct_raw(name: str, payload: bytes) -> c.Command | None:
    """The command class ``name`` built from the msgpack map of its fields (else ``None``)."""
    cls = CLASSES.get(name)
    try:
        raw = msgpack.unpackb(payload)
    except Exception:
        return None
    if cls is None or type(raw) is not dict or not all(type(k) is str for k in raw):
        return None
    known = {f.name: f for f in dataclasses.fields(cls)}
    if raw.keys() - known.keys():
        return None
    if any(fuzzlib.required(f) and n not in raw for n, f in known.items()):
        return None
    hints = fuzzlib.HINTS[cls]
    for key, value in raw.items():
        if type(value) is list and "tuple" in str(hints[key]):
            raw[key] = tuple(value)
    return cls(**raw)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    if mode & 0x80:
        structured(data[1:])
        return
    text, _, payload = data[1:].partition(b"\0")
    name = text.decode("utf-8", "replace")
    command = direct_raw(name, payload) if mode & 0x10 else parse(name, payload)
    if command is not None:
        v = fuzzlib.Values(atheris.FuzzedDataProvider(b""))
        step(STATES[(mode >> 5) & 3], command, fuzzlib.AT, v)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
