"""A Grid that hands replies over as they arrive, for aggregation from running sums.

Flower's ``Grid.send_and_receive`` collects every reply of a round into a list
before ``Strategy.start`` passes it to ``aggregate_train``, so the server holds
all of them at once: memory that grows with the clients per round. Flower types
the replies as an ``Iterable[Message]``, so :class:`StreamingGrid` returns a
generator instead: it pushes the messages at once, as Flower does, then pulls the
replies in the same polling loop and yields each as soon as it is pulled. A
strategy that folds them into running sums (:mod:`.folding`) can drop each one
before the next arrives; one that needs them all makes a list, as before. Flower's
round loop itself is unchanged (:meth:`~.guard.ReplyGuard.start` passes it this
grid).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

#: Seconds between two pulls when the wrapped grid does not say (Flower's HTTP grid waits 3 s; its
#: in-memory grid, the simulation's, has ``pull_interval``, 0.1 s by default).
DEFAULT_PULL_INTERVAL = 3.0


class StreamingGrid:
    """``grid`` with a ``send_and_receive`` that yields replies as they are pulled; everything else is ``grid``'s."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.pull_interval = float(getattr(grid, "pull_interval", DEFAULT_PULL_INTERVAL))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterator[Message]:
        """Push ``messages`` now; the returned iterator pulls and yields their replies until all have come or
        ``timeout`` seconds have passed (None: no limit), as Flower's ``Grid.send_and_receive`` waits."""
        waiting = set(self._grid.push_messages(messages))
        return self._replies(waiting, None if timeout is None else time.time() + timeout)

    def _replies(self, waiting: set[str], deadline: float | None) -> Iterator[Message]:
        while waiting and (deadline is None or time.time() < deadline):
            pulled = list(self._grid.pull_messages(waiting))
            waiting.difference_update(message.metadata.reply_to_message_id for message in pulled)
            pulled.reverse()
            while pulled:  # each reply leaves this list as it is handed over: the consumer may drop it at once
                yield pulled.pop()
            if waiting:
                time.sleep(self.pull_interval)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
