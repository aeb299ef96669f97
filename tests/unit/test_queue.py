"""The two-priority bounded FIFO and its full-queue policies (HOME-201..203, OC-CORE-1003)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from orchestratord.config import FullPolicy
from orchestratord.core.queue import Priority, QueueFull, TaskQueue


@pytest.mark.req("HOME-201", "OC-CORE-1004", "ORCH-3004")
def test_a_later_interactive_task_leaves_before_an_earlier_batch_task() -> None:
    queue: TaskQueue[Item] = TaskQueue(4, FullPolicy.REJECT)
    queue.admit(b("early-batch"))
    queue.admit(i("late-interactive"))
    assert drain_names(queue) == ["late-interactive", "early-batch"]


@dataclass(eq=False)
class Item:
    name: str
    priority: Priority


def i(name: str) -> Item:
    return Item(name, Priority.INTERACTIVE)


def b(name: str) -> Item:
    return Item(name, Priority.BATCH)


def drain_names(queue: TaskQueue[Item]) -> list[str]:
    names = []
    while (item := queue.pop()) is not None:
        names.append(item.name)
    return names


@pytest.mark.req("HOME-201", "HOME-202", "OC-CORE-1004")
def test_interactive_dequeues_before_batch_and_fifo_within_priority() -> None:
    queue: TaskQueue[Item] = TaskQueue(10, FullPolicy.REJECT)
    for item in (b("b1"), i("i1"), b("b2"), i("i2")):
        queue.admit(item)
    assert drain_names(queue) == ["i1", "i2", "b1", "b2"]


@pytest.mark.req("HOME-206")
def test_position_counts_interactive_lane_ahead_of_batch() -> None:
    queue: TaskQueue[Item] = TaskQueue(10, FullPolicy.REJECT)
    first_batch = b("b1")
    assert queue.admit(first_batch).position == 0
    assert queue.admit(i("i1")).position == 0
    assert queue.position(first_batch) == 1
    assert queue.admit(b("b2")).position == 2


@pytest.mark.req("HOME-203", "OC-CORE-1001", "OC-CORE-1002")
def test_reject_policy_refuses_and_keeps_queue() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.REJECT)
    queue.admit(b("b1"))
    queue.admit(i("i1"))
    with pytest.raises(QueueFull) as full:
        queue.admit(i("i2"))
    assert full.value.policy is FullPolicy.REJECT
    assert drain_names(queue) == ["i1", "b1"]


@pytest.mark.req("HOME-203", "OC-CORE-1002")
def test_drop_lru_drops_the_oldest_queued_task_whatever_its_priority() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.DROP_LRU)
    queue.admit(i("i1"))
    queue.admit(b("b1"))
    admitted = queue.admit(b("b2"))
    assert admitted.displaced is not None and admitted.displaced.name == "i1"
    displaced = queue.admit(i("i2")).displaced
    assert displaced is not None and displaced.name == "b1"
    assert drain_names(queue) == ["i2", "b2"]


@pytest.mark.req("HOME-203", "OC-CORE-1002")
def test_shed_low_priority_displaces_newest_batch_for_interactive() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.SHED_LOW_PRIORITY)
    queue.admit(b("b1"))
    queue.admit(b("b2"))
    displaced = queue.admit(i("i1")).displaced
    assert displaced is not None and displaced.name == "b2"
    with pytest.raises(QueueFull):
        queue.admit(b("b3"))
    assert drain_names(queue) == ["i1", "b1"]


@pytest.mark.req("HOME-203")
def test_shed_low_priority_rejects_interactive_when_no_batch_queued() -> None:
    queue: TaskQueue[Item] = TaskQueue(1, FullPolicy.SHED_LOW_PRIORITY)
    queue.admit(i("i1"))
    with pytest.raises(QueueFull):
        queue.admit(i("i2"))


@pytest.mark.req("OC-CORE-1005")
def test_remove_takes_a_queued_item_out() -> None:
    queue: TaskQueue[Item] = TaskQueue(4, FullPolicy.REJECT)
    keep, gone = b("keep"), b("gone")
    queue.admit(keep)
    queue.admit(gone)
    assert queue.remove(gone)
    assert not queue.remove(gone)
    assert queue.position(gone) == -1
    assert drain_names(queue) == ["keep"]


def test_positions_stay_exact_through_removals_requeues_and_compaction() -> None:
    rng = random.Random(7)
    queue: TaskQueue[Item] = TaskQueue(10_000, FullPolicy.REJECT)
    model: list[Item] = []  # the dequeue order, kept naively
    for step in range(3000):
        roll = rng.random()
        if roll < 0.5 or not model:
            item = i(f"i{step}") if rng.random() < 0.3 else b(f"b{step}")
            position = queue.admit(item).position
            model.append(item)
            model.sort(key=lambda x: x.priority is Priority.BATCH)  # stable: FIFO per lane
            assert position == model.index(item)
        elif roll < 0.8:
            gone = model.pop(rng.randrange(len(model)))
            assert queue.remove(gone)
        elif roll < 0.9:
            assert queue.pop() is model.pop(0)
        else:
            head = queue.pop()
            assert head is model.pop(0)
            queue.requeue_front(head)
            model.insert(0, head)
        assert len(queue) == len(model)
        for probe in rng.sample(model, min(5, len(model))):
            assert queue.position(probe) == model.index(probe)
    assert drain_names(queue) == [item.name for item in model]


class CountingItem:
    """Counts every time the queue looks at an item (hash, comparison, priority)."""

    touches = 0

    def __init__(self, priority: Priority) -> None:
        self._priority = priority

    @property
    def priority(self) -> Priority:
        CountingItem.touches += 1
        return self._priority

    def __hash__(self) -> int:
        CountingItem.touches += 1
        return id(self)

    def __eq__(self, other: object) -> bool:
        CountingItem.touches += 1
        return self is other


def touches_per_admission(queued: int) -> float:
    queue: TaskQueue[CountingItem] = TaskQueue(queued + 100, FullPolicy.REJECT)
    for n in range(queued):
        queue.admit(CountingItem(Priority.BATCH if n % 2 else Priority.INTERACTIVE))
    CountingItem.touches = 0
    for n in range(100):
        queue.admit(CountingItem(Priority.BATCH if n % 2 else Priority.INTERACTIVE))
    return CountingItem.touches / 100


@pytest.mark.req("OC-CORE-1003", "HOME-202")
def test_admission_work_does_not_grow_with_the_queue() -> None:
    # O(1): admitting into a queue of 20,000 looks at exactly as many items as into one of 10
    # (a scan for position, removal or pruning would touch the queued items).
    assert touches_per_admission(10) == touches_per_admission(20_000) <= 4


@pytest.mark.req("HOME-203", "OC-CORE-1002")
def test_a_task_put_back_after_an_engine_failure_counts_as_the_oldest() -> None:
    queue: TaskQueue[Item] = TaskQueue(3, FullPolicy.DROP_LRU)
    queue.admit(b("b1"))
    queue.admit(b("b2"))
    first = queue.pop()
    assert first is not None
    queue.admit(i("i1"))  # arrives after b1 was handed out
    queue.requeue_front(first)  # b1 had been handed to an engine that was gone
    assert queue.position(first) == 1  # behind the interactive task, first of the batch
    displaced = queue.admit(i("i2")).displaced
    assert displaced is first  # the oldest queued task, though it was put back last
