"""Coverage-guided fuzzing of the event codec (atheris).

Feeds arbitrary bytes to ``CODEC.decode``. The only exception allowed out of it is
``DecodeError`` (or a subclass). Whenever the codec's typed path (msgspec) accepts the
bytes, its complete path accepts them too and builds the same envelope, field types
included. Whenever decoding succeeds:

* re-encoding and decoding again gives an equal envelope, and the canonical encoding is
  stable (encoding the re-decoded envelope gives the same bytes);
* folding the envelope into a session (new, or active with agents and cursors) never
  raises: replay must never fail on history (``projections.session.evolve``).

Run (see fuzz/README.md)::

    .venv/bin/python fuzz/fuzz_codec.py -max_total_time=300 /tmp/codec-corpus fuzz/corpus/codec
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["plantangenet", "msgpack"]):
    import fuzzlib

    from plantangenet.errors import DecodeError, PayloadTooLarge
    from plantangenet.events import CODEC, Envelope
    from plantangenet.projections.session import evolve

STATES = (fuzzlib.NEW, fuzzlib.ACTIVE)


def _typed(data: bytes) -> Envelope | None:
    """What the codec's typed path makes of ``data`` (``None``: it steps aside)."""
    try:
        return CODEC._decode_typed(data, None)
    except Exception:
        return None


def TestOneInput(data: bytes) -> None:
    typed = _typed(data)
    if typed is not None:  # the typed path accepts only what the complete path accepts
        complete = CODEC._decode(data, None)
        assert typed == complete and typed.digest == complete.digest, (typed, complete)
        assert all(
            type(getattr(typed.event, name)) is type(getattr(complete.event, name))
            for name in CODEC.registry.spec_of(typed.event).field_names
        ), (typed, complete)
    try:
        envelope = CODEC.decode(data)
    except DecodeError:
        return
    try:
        encoded = CODEC.encode(envelope)
    except PayloadTooLarge:  # optional fields written out can grow a near-limit payload
        return
    again = CODEC.decode(encoded)
    assert again == envelope, f"round trip changed the envelope:\n{envelope!r}\n{again!r}"
    assert CODEC.encode(again) == encoded, "the encoding of a decoded envelope is not stable"
    for state in STATES:
        evolve(state, envelope)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
