"""One owner per in-process model, serving the requests of every task in batches.

`Batcher(run, key)`: callers `await submit(item)`; requests issued together (in the same tick, within `wait`
seconds, or while a batch runs) are split by `key(item)` into batches that can share one call, and
`run(items)` serves each batch in a worker thread, off the event loop, returning one result per item — or an
exception object for an item that failed on its own. An exception raised by `run` goes to every item of its
batch. The queue survives successive event loops (each `asyncio.run` starts it afresh)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any


def alone() -> Hashable:
    """A key no other request shares (a request that must run by itself)."""
    return object()


class Batcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], key: Callable[[Any], Hashable] = lambda item: None,
                 wait: float = 0.0):
        self.run, self.key, self.wait = run, key, wait
        self.sizes: list[int] = []  # requests per call of `run` (tests and benchmarks)
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._drainer is not None and self._drainer.get_loop() is not loop:  # an earlier asyncio.run's
            self._pending, self._drainer = [], None
        fut = loop.create_future()
        self._pending.append((item, fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        await asyncio.sleep(self.wait)  # companions issued at the same moment join the first batch
        while self._pending:
            group = [p for p in self._pending if not p[1].done()]  # callers that timed out or were cancelled
            self._pending = []
            batches: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
            for item, fut in group:
                batches.setdefault(self.key(item), []).append((item, fut))
            for batch in batches.values():
                try:
                    results = await asyncio.to_thread(self.run, [item for item, _ in batch])
                except Exception as e:  # noqa: BLE001  every caller of the batch gets the error, as it is
                    results = [e] * len(batch)
                else:
                    self.sizes.append(len(batch))
                for (_, fut), result in zip(batch, results):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
