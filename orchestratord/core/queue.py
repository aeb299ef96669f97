"""The bounded two-priority FIFO queue of one pool (HOME-201, HOME-202, HOME-203, OC-CORE-1003).

``interactive`` always leaves before ``batch``; within a priority order is FIFO. When the
queue is full the pool's policy decides:

- ``reject``: the newcomer is refused (429 ``ADMISSION_REJECT``).
- ``drop-lru``: the oldest queued task, whatever its priority, is dropped with
  ``QUEUE_FULL_DROP_LRU`` and the newcomer admitted.
- ``shed-low-priority``: an interactive newcomer displaces the most recently queued batch
  task (it has waited least); a batch newcomer, or a queue holding no batch work, is refused.

Costs, n being the number of queued items: admit, pop and len are O(1) amortized; admit's
position needs no scan (the newcomer is last in its lane). Removal from the middle (cancel,
deadline) leaves a tombstone that pop skips, O(log n), and ``position`` of an arbitrary item
is O(log n): its index in the lane minus the tombstones ahead of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from sortedcontainers import SortedList

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
        super().__init__(f"queue full (policy {policy.value})")  # pragma: no mutate
        self.policy = policy


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    position: int
    displaced: T | None


class _Entry(Generic[T]):
    __slots__ = ("arrival", "index", "item", "live")

    def __init__(self, item: T, index: int, arrival: int) -> None:
        self.item = item
        self.index = index  # place in its lane; increases towards the tail
        self.arrival = arrival  # order of admission across both lanes (drop-lru)
        self.live = True


class _Lane(Generic[T]):
    """One priority's FIFO: a deque of entries; removed entries stay as tombstones."""

    __slots__ = ("entries", "live", "next_index", "tombstones")

    def __init__(self) -> None:
        self.entries: deque[_Entry[T]] = deque()
        self.tombstones: SortedList = SortedList()  # indexes of dead entries still queued
        self.live = 0
        self.next_index = 0

    def append(self, entry: _Entry[T]) -> None:
        self.entries.append(entry)
        self.live += 1

    def appendleft(self, entry: _Entry[T]) -> None:
        self.entries.appendleft(entry)
        self.live += 1

    def _trim(self) -> None:
        entries = self.entries
        while entries and not entries[0].live:
            self.tombstones.remove(entries.popleft().index)
        if entries and not entries[-1].live:
            while entries and not entries[-1].live:
                self.tombstones.remove(entries.pop().index)
            if entries:  # indexes stay gap-free: the next newcomer follows the live tail
                self.next_index = entries[-1].index + 1

    def head(self) -> _Entry[T] | None:
        self._trim()
        return self.entries[0] if self.entries else None

    def tail(self) -> _Entry[T] | None:
        self._trim()
        return self.entries[-1] if self.entries else None

    def kill(self, entry: _Entry[T]) -> None:
        entry.live = False
        self.live -= 1
        self.tombstones.add(entry.index)
        if not self.live:
            self.entries.clear()
            self.tombstones.clear()
        # Only how often compaction runs depends on these bounds, never what the queue holds.
        elif len(self.tombstones) > 64 and len(self.tombstones) > self.live:  # pragma: no mutate
            # Amortized compaction: tombstones never outnumber the live entries for long.
            self.entries = deque(e for e in self.entries if e.live)
            for index, live_entry in enumerate(self.entries):
                live_entry.index = index
            self.next_index = len(self.entries)
            self.tombstones.clear()

    def position(self, entry: _Entry[T]) -> int:
        self._trim()
        first = self.entries[0].index
        ahead_dead: int = self.tombstones.bisect_left(entry.index)
        return entry.index - first - ahead_dead


class TaskQueue(Generic[T]):
    def __init__(self, capacity: int, policy: FullPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self._lanes: dict[Priority, _Lane[T]] = {p: _Lane() for p in Priority}
        self._entries: dict[T, _Entry[T]] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: T) -> bool:
        return item in self._entries

    def depth(self, priority: Priority) -> int:
        return self._lanes[priority].live

    def admit(self, item: T) -> Admitted[T]:
        """Enqueue ``item`` or raise :class:`QueueFull`; may displace a queued item."""
        displaced: T | None = None
        if len(self._entries) >= self.capacity:
            displaced = self._make_room(item)
        lane = self._lanes[item.priority]
        entry = _Entry(item, lane.next_index, self._arrivals)
        lane.next_index += 1
        self._arrivals += 1
        lane.append(entry)
        self._entries[item] = entry
        ahead = self._lanes[Priority.INTERACTIVE].live if item.priority is Priority.BATCH else 0
        return Admitted(ahead + lane.live - 1, displaced)

    def _make_room(self, newcomer: T) -> T:
        batch = self._lanes[Priority.BATCH]
        if self.policy is FullPolicy.DROP_LRU:
            heads = [e for e in (lane.head() for lane in self._lanes.values()) if e is not None]
            oldest = min(heads, key=lambda e: e.arrival)
            self.remove(oldest.item)
            return oldest.item
        shed = self.policy is FullPolicy.SHED_LOW_PRIORITY
        newest_batch = batch.tail() if shed else None
        if newest_batch is not None and newcomer.priority is Priority.INTERACTIVE:
            self.remove(newest_batch.item)
            return newest_batch.item
        raise QueueFull(self.policy)

    def requeue_front(self, item: T) -> None:
        """Put a task that could not start back at the head of its lane (engine outage)."""
        lane = self._lanes[item.priority]
        first = lane.head()
        index = first.index - 1 if first is not None else lane.next_index
        if first is None:
            lane.next_index += 1
        entry = _Entry(item, index, -1 - self._arrivals)
        lane.appendleft(entry)
        self._entries[item] = entry

    def peek(self) -> T | None:
        for priority in Priority:
            entry = self._lanes[priority].head()
            if entry is not None:
                return entry.item
        return None

    def heads(self) -> list[T]:
        """The first waiting item of each priority (each lane's oldest)."""
        heads = (self._lanes[p].head() for p in Priority)
        return [entry.item for entry in heads if entry is not None]

    def pop(self) -> T | None:
        for priority in Priority:
            lane = self._lanes[priority]
            entry = lane.head()
            if entry is not None:
                lane.entries.popleft()
                lane.live -= 1
                del self._entries[entry.item]
                return entry.item
        return None

    def remove(self, item: T) -> bool:
        entry = self._entries.pop(item, None)
        if entry is None:
            return False
        self._lanes[item.priority].kill(entry)
        return True

    def position(self, item: T) -> int:
        """0-based place in dequeue order; -1 if not queued."""
        entry = self._entries.get(item)
        if entry is None:
            return -1
        ahead = self._lanes[Priority.INTERACTIVE].live if item.priority is Priority.BATCH else 0
        return ahead + self._lanes[item.priority].position(entry)

    def drain(self) -> list[T]:
        items = [e.item for p in Priority for e in self._lanes[p].entries if e.live]
        self._lanes = {p: _Lane() for p in Priority}
        self._entries.clear()
        return items
