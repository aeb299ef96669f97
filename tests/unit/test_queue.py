"""The two-priority bounded FIFO and its full-queue policies (HOME-201..203)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from orchestratord.config import FullPolicy
from orchestratord.core.queue import Priority, QueueFull, TaskQueue

pytestmark = pytest.mark.req("HOME-201", "HOME-202", "HOME-203")


@pytest.mark.req("OC-CORE-1004", "ORCH-3004")
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


def test_interactive_dequeues_before_batch_and_fifo_within_priority() -> None:
    queue: TaskQueue[Item] = TaskQueue(10, FullPolicy.REJECT)
    for item in (b("b1"), i("i1"), b("b2"), i("i2")):
        queue.admit(item)
    assert drain_names(queue) == ["i1", "i2", "b1", "b2"]


def test_position_counts_interactive_lane_ahead_of_batch() -> None:
    queue: TaskQueue[Item] = TaskQueue(10, FullPolicy.REJECT)
    first_batch = b("b1")
    assert queue.admit(first_batch).position == 0
    assert queue.admit(i("i1")).position == 0
    assert queue.position(first_batch) == 1
    assert queue.admit(b("b2")).position == 2


def test_reject_policy_refuses_and_keeps_queue() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.REJECT)
    queue.admit(b("b1"))
    queue.admit(i("i1"))
    with pytest.raises(QueueFull) as full:
        queue.admit(i("i2"))
    assert full.value.policy is FullPolicy.REJECT
    assert drain_names(queue) == ["i1", "b1"]


def test_drop_lru_drops_oldest_batch_first() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.DROP_LRU)
    queue.admit(i("i1"))
    queue.admit(b("b1"))
    admitted = queue.admit(i("i2"))
    assert admitted.displaced is not None and admitted.displaced.name == "b1"
    assert drain_names(queue) == ["i1", "i2"]


def test_drop_lru_drops_oldest_interactive_when_no_batch() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.DROP_LRU)
    queue.admit(i("i1"))
    queue.admit(i("i2"))
    displaced = queue.admit(b("b1")).displaced
    assert displaced is not None and displaced.name == "i1"
    assert drain_names(queue) == ["i2", "b1"]


def test_shed_low_priority_displaces_newest_batch_for_interactive() -> None:
    queue: TaskQueue[Item] = TaskQueue(2, FullPolicy.SHED_LOW_PRIORITY)
    queue.admit(b("b1"))
    queue.admit(b("b2"))
    displaced = queue.admit(i("i1")).displaced
    assert displaced is not None and displaced.name == "b2"
    with pytest.raises(QueueFull):
        queue.admit(b("b3"))
    assert drain_names(queue) == ["i1", "b1"]


def test_shed_low_priority_rejects_interactive_when_no_batch_queued() -> None:
    queue: TaskQueue[Item] = TaskQueue(1, FullPolicy.SHED_LOW_PRIORITY)
    queue.admit(i("i1"))
    with pytest.raises(QueueFull):
        queue.admit(i("i2"))


def test_remove_takes_a_queued_item_out() -> None:
    queue: TaskQueue[Item] = TaskQueue(4, FullPolicy.REJECT)
    keep, gone = b("keep"), b("gone")
    queue.admit(keep)
    queue.admit(gone)
    assert queue.remove(gone)
    assert not queue.remove(gone)
    assert queue.position(gone) == -1
    assert drain_names(queue) == ["keep"]


async def test_get_waits_for_an_item() -> None:
    queue: TaskQueue[Item] = TaskQueue(4, FullPolicy.REJECT)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.admit(b("late"))
    assert (await asyncio.wait_for(waiter, 1)).name == "late"
