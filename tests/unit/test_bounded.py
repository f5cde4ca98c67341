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
