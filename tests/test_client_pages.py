"""The bot client's history pages and error mapping, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plantangenet.errors import JournalError, PlantangenetError
from plantangenet.nats import store
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import error_from


def paged_client(pages: list[tuple[list[tuple[int, bytes]], int, bool]]) -> BotClient:
    client = BotClient.__new__(BotClient)
    asked: list[int] = []

    async def page(session_id: str, start: int) -> tuple[list[tuple[int, bytes]], int, bool]:
        asked.append(start)
        return pages.pop(0) if pages else ([], 0, False)

    client.page = page  # type: ignore[method-assign,assignment]
    return client


def test_an_empty_page_that_says_more_is_asked_again_not_the_end() -> None:
    # A lagging replica: the first answer is empty but says more is stored.
    client = paged_client(
        [([], 3, True), ([(1, b"a"), (2, b"b")], 3, True), ([(3, b"c")], 3, False)]
    )

    async def read() -> list[tuple[int, bytes]]:
        return [item async for item in client.stored("s")]

    assert asyncio.run(read()) == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_a_service_that_keeps_saying_more_but_sends_nothing_is_an_error() -> None:
    client = paged_client([([], 3, True)] * 30)

    async def read() -> list[tuple[int, bytes]]:
        return [item async for item in client.stored("s")]

    with pytest.raises(JournalError, match="says more events follow"):
        asyncio.run(read())


def test_pages_come_whole_as_batches_and_stop_at_the_bound() -> None:
    pages = [([(1, b"a"), (2, b"b")], 5, True), ([(4, b"d"), (5, b"e")], 5, False)]

    async def read(to: int | None) -> list[list[tuple[int, bytes]]]:
        client = paged_client(list(pages))
        return [page async for page in client.stored_pages("s", 1, to)]

    assert asyncio.run(read(None)) == [[(1, b"a"), (2, b"b")], [(4, b"d"), (5, b"e")]]
    assert asyncio.run(read(4)) == [[(1, b"a"), (2, b"b")], [(4, b"d")]]
    assert asyncio.run(read(2)) == [[(1, b"a"), (2, b"b")]]
    assert asyncio.run(read(3)) == [[(1, b"a"), (2, b"b")]]  # no empty page


def all_error_classes() -> list[type[PlantangenetError]]:
    found: list[type[PlantangenetError]] = []
    pending: list[type[PlantangenetError]] = [PlantangenetError]
    while pending:
        cls = pending.pop()
        if "code" in vars(cls) and cls not in found:  # (subclasses that inherit it: internal)
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_code_names_one_class_and_comes_back_as_it() -> None:
    # access, store and projections.user are imported above: their error classes are loaded.
    classes = all_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in classes:
        error = error_from({"code": cls.code, "message": "m"})
        assert type(error) is cls and error.code == cls.code and str(error) == "m"
    assert type(error_from({"code": "store_in_use"})) is store.StoreInUse
    unknown: Any = error_from({"code": "from_the_future", "message": "m"})
    assert type(unknown) is PlantangenetError and unknown.code == "from_the_future"
