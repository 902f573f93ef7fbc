"""The garbage collector's settings ``plantangenet serve`` makes (see
:mod:`plantangenet.cli.collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from plantangenet.cli.collector import SERVE_YOUNG_THRESHOLD, settle_collector
from plantangenet.cli.parser import build_parser


@pytest.fixture(autouse=True)
def restored_collector() -> Iterator[None]:
    """Each test leaves the collector of the test process as it found it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settling_sets_the_young_threshold_and_freezes_what_is_alive() -> None:
    _, middle, old = gc.get_threshold()
    kept: list[object] = []  # a tracked object alive before settling
    settings = settle_collector(5_000)
    assert settings.thresholds == (5_000, middle, old) == gc.get_threshold()
    assert settings.frozen == gc.get_freeze_count() > 1_000
    # Frozen: no collection sees it (the permanent generation is outside all three).
    assert not any(kept is o for o in gc.get_objects())
    assert "every 5,000 allocations" in settings.describe()
    assert f"{settings.frozen:,} startup objects frozen" in settings.describe()


def test_zero_keeps_the_young_threshold_and_still_freezes() -> None:
    gc.set_threshold(1_234, 11, 12)
    settings = settle_collector(0)
    assert settings.thresholds == (1_234, 11, 12) == gc.get_threshold()
    assert settings.frozen > 0


def test_a_negative_threshold_is_refused_before_anything_changes() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(ValueError, match="0 or more, got -1"):
        settle_collector(-1)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)


def test_serve_takes_the_threshold_from_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).gc_young == SERVE_YOUNG_THRESHOLD
    assert parser.parse_args(["serve", "--gc-young", "0"]).gc_young == 0
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["serve", "--gc-young", bad])
        assert exited.value.code == 2
    assert "--gc-young" in capsys.readouterr().err
