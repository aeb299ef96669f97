"""The bounded two-priority FIFO queue of one pool (HOME-201, HOME-202, HOME-203).

``interactive`` is always dequeued before ``batch``; within a priority order is FIFO. When
the queue is full the pool's policy decides:

- ``reject``: the newcomer is refused (429 ``ADMISSION_REJECT``).
- ``drop-lru``: the oldest queued task (batch first, since interactive work is never the
  least valuable to keep) is dropped with ``QUEUE_FULL_DROP_LRU`` and the newcomer admitted.
- ``shed-low-priority``: an interactive newcomer displaces the most recently queued batch
  task (it has waited least); a batch newcomer, or a queue holding no batch work, is refused.

Enqueue and dequeue are O(1); removal (cancel) and position are O(n), n bounded by capacity.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from orchestratord.config import FullPolicy


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class Queueable(Protocol):
    @property
    def priority(self) -> Priority: ...


T = TypeVar("T", bound=Queueable)


class QueueFull(Exception):
    def __init__(self, policy: FullPolicy) -> None:
        super().__init__(f"queue full (policy {policy.value})")
        self.policy = policy


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    position: int
    displaced: T | None


class TaskQueue(Generic[T]):
    def __init__(self, capacity: int, policy: FullPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self._lanes: dict[Priority, deque[T]] = {p: deque() for p in Priority}
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def depth(self, priority: Priority) -> int:
        return len(self._lanes[priority])

    def admit(self, item: T) -> Admitted[T]:
        """Enqueue ``item`` or raise :class:`QueueFull`; may displace a queued item."""
        displaced: T | None = None
        if len(self) >= self.capacity:
            displaced = self._make_room(item)
        self._lanes[item.priority].append(item)
        self._nonempty.set()
        return Admitted(self.position(item), displaced)

    def _make_room(self, newcomer: T) -> T:
        batch = self._lanes[Priority.BATCH]
        interactive = self._lanes[Priority.INTERACTIVE]
        if self.policy is FullPolicy.DROP_LRU:
            return batch.popleft() if batch else interactive.popleft()
        shed = self.policy is FullPolicy.SHED_LOW_PRIORITY
        if shed and newcomer.priority is Priority.INTERACTIVE and batch:
            return batch.pop()
        raise QueueFull(self.policy)

    def pop(self) -> T | None:
        for priority in Priority:
            lane = self._lanes[priority]
            if lane:
                item = lane.popleft()
                if not len(self):
                    self._nonempty.clear()
                return item
        return None

    async def get(self) -> T:
        while True:
            item = self.pop()
            if item is not None:
                return item
            await self._nonempty.wait()

    def remove(self, item: T) -> bool:
        lane = self._lanes[item.priority]
        try:
            lane.remove(item)
        except ValueError:
            return False
        if not len(self):
            self._nonempty.clear()
        return True

    def position(self, item: T) -> int:
        """0-based place in dequeue order; -1 if not queued."""
        ahead = 0
        for priority in Priority:
            lane = self._lanes[priority]
            if priority is item.priority:
                try:
                    return ahead + lane.index(item)
                except ValueError:
                    return -1
            ahead += len(lane)
        return -1

    def drain(self) -> list[T]:
        items = [item for priority in Priority for item in self._lanes[priority]]
        for lane in self._lanes.values():
            lane.clear()
        self._nonempty.clear()
        return items
