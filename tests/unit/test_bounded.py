"""The one bounded memory (issue 8: five LRU variants became one)."""

from __future__ import annotations

import copy
import pickle
import threading

from prefect_comfy.bounded import Bounded


def test_remember_forgets_the_least_recently_remembered_first():
    memory = Bounded(2)
    memory.remember("a", 1)
    memory.remember("b", 2)
    memory.remember("a", 3)  # "a" is now the newest
    memory.remember("c", 4)
    assert dict(memory) == {"a": 3, "c": 4}


def test_remember_can_keep_an_existing_value():
    memory = Bounded(3)
    memory.remember("a", "first")
    memory.remember("a", "second", replace=False)
    assert memory["a"] == "first"


def test_seen_answers_and_remembers():
    memory = Bounded(2)
    assert [memory.seen(k) for k in ("a", "a", "b", "c", "a")] == [False, True, False, False, False]
    assert list(memory) == ["c", "a"]


def test_take_removes_and_returns():
    memory = Bounded(2)
    memory.remember("a", 1)
    assert memory.take("a") == 1
    assert memory.take("a") is None
    assert len(memory) == 0


def test_copies_and_pickles_with_a_lock_of_their_own():
    memory = Bounded(3)
    memory.remember("a", 1)
    for clone in (copy.deepcopy(memory), pickle.loads(pickle.dumps(memory))):
        assert dict(clone) == {"a": 1} and clone.size == 3
        clone.remember("b", 2)
        assert "b" not in memory


def test_writes_from_many_threads_keep_the_bound():
    memory = Bounded(100)

    def write(offset: int) -> None:
        for n in range(2000):
            memory.remember((offset, n), n)
            memory.seen((offset, -n))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(memory) == 100


def test_weight_bounds_the_total_and_counts_evictions():
    memory = Bounded(10, max_weight=10)
    memory.remember("a", "A", weight=4)
    memory.remember("b", "B", weight=4)
    memory.remember("a", "A2", weight=5)  # replaced: its old weight goes, "a" is the newest
    assert memory.weight == 9 and list(memory) == ["b", "a"]
    memory.remember("c", "C", weight=3)  # 12 > 10: the oldest ("b") goes
    assert list(memory) == ["a", "c"] and memory.weight == 8 and memory.evicted == 1
    assert memory.take("a") == "A2" and memory.weight == 3
    assert memory.pop("c") == "C" and memory.weight == 0
    memory.remember("d", "D", weight=11)  # heavier than the bound on its own: not kept
    assert len(memory) == 0 and memory.weight == 0 and memory.evicted == 2
    memory.remember("e", "E", weight=2)
    memory.clear()
    assert memory.weight == 0 and memory.evicted == 2


def test_use_returns_the_value_and_makes_it_the_newest():
    memory = Bounded(2)
    memory.remember("a", 1)
    memory.remember("b", 2)
    assert memory.use("a") == 1 and memory.use("missing") is None
    memory.remember("c", 3)
    assert dict(memory) == {"a": 1, "c": 3}


def test_weights_survive_a_copy():
    memory = Bounded(3, max_weight=5)
    memory.remember("a", 1, weight=4)
    clone = copy.deepcopy(memory)
    assert clone.weight == 4 and clone.max_weight == 5
    clone.remember("b", 2, weight=4)
    assert list(clone) == ["b"] and memory.weight == 4
