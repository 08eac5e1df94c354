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

With a ``window``, only that many messages are in flight at once; the next is
pushed as a reply comes in. That is for Flower's simulation engine, whose link
state, on every poll of every virtual node, scans every message stored
(``InMemoryLinkState.get_message_ins``): its cost per poll is the number of nodes
times the number of messages in flight, and a round of 1,000 clients spent two
thirds of the simulation process there. Its clients train a few at a time anyway
(one per Ray actor), so a window a little larger than that keeps every actor
busy (:func:`simulation_window`). Real SuperNodes each poll on their own, so
there every message is pushed at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

#: Seconds between two pulls when the wrapped grid does not say (Flower's HTTP grid waits 3 s; its
#: in-memory grid, the simulation's, has ``pull_interval``, 0.1 s by default).
DEFAULT_PULL_INTERVAL = 3.0


class StreamingGrid:
    """``grid`` with a ``send_and_receive`` that yields replies as they are pulled; everything else is ``grid``'s.

    ``window``: called at each ``send_and_receive`` with the number of messages, the most of them in flight at
    once (None: all).
    """

    def __init__(self, grid: Grid, window: Callable[[int], int | None] = lambda messages: None) -> None:
        self._grid = grid
        self._window = window
        self.pull_interval = float(getattr(grid, "pull_interval", DEFAULT_PULL_INTERVAL))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterator[Message]:
        """Push ``messages`` (the first ``window`` of them) now, in their order; the returned iterator pulls and
        yields their replies, pushing the rest as replies come in, until all have come or ``timeout`` seconds
        have passed (None: no limit), as Flower's ``Grid.send_and_receive`` waits."""
        queued = deque(messages)
        window = self._window(len(queued))
        waiting = set(self._grid.push_messages([queued.popleft() for _ in range(min(window or len(queued),
                                                                                    len(queued)))]))
        return self._replies(waiting, queued, window, None if timeout is None else time.time() + timeout)

    def _replies(self, waiting: set[str], queued: deque[Message], window: int | None,
                 deadline: float | None) -> Iterator[Message]:
        while (waiting or queued) and (deadline is None or time.time() < deadline):
            pulled = list(self._grid.pull_messages(waiting))
            waiting.difference_update(message.metadata.reply_to_message_id for message in pulled)
            if queued and window is not None and len(waiting) < window:
                waiting.update(self._grid.push_messages([queued.popleft()
                                                         for _ in range(min(window - len(waiting), len(queued)))]))
            pulled.reverse()
            while pulled:  # each reply leaves this list as it is handed over: the consumer may drop it at once
                yield pulled.pop()
            if waiting:
                time.sleep(self.pull_interval)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


#: Stored-message checks per pass of the simulation engine over its nodes (nodes x messages in flight) below
#: which a window only adds latency: every message is then pushed at once.
SCAN_BUDGET = 100_000


def simulation_window(nodes: int, messages: int) -> int | None:
    """Messages in flight for Flower's simulation engine with ``nodes`` virtual nodes and ``messages`` to send;
    None (all at once) when ``nodes * messages`` is within ``SCAN_BUDGET`` or Ray is not running here.

    At least twice the CPUs of the Ray cluster (no more clients than that train at once) and at least 8; and
    at least one per 125 nodes, because every message pushed waits for the engine's next pass over all the
    nodes, which takes longer the more nodes there are: the window grows with them so that a pass delivers
    more. Measured in docs/performance.md (cross-device scale).
    """
    if nodes * messages <= SCAN_BUDGET:
        return None
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return max(8, 2 * int(ray.cluster_resources().get("CPU", 0)), -(-nodes // 125))
