"""``Idempotency-Key`` records: one claim per (account, route, key), taken atomically.

The first request with a key claims it before its body is even read; a second request with the same
key that arrives while the first still runs waits for the first to end, then sees its answer. So three
concurrent posts with one key create one resource, never three. What the first request's answer was
decides what happens to the key: a 2xx is kept (and replayed, or refused by a face whose keys are
single-use); anything else releases the key, so that a client may try again with it.

Example:
    >>> import asyncio
    >>> records = IdempotencyRecords()
    >>> async def demo():
    ...     claim = await records.claim(("acct_1", "/jobs", "k"))  # ours: run the request
    ...     records.settle(claim, Answer(202, b"{}", "application/json"))
    ...     return (await records.claim(("acct_1", "/jobs", "k"))).status
    >>> asyncio.run(demo())
    202
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

RecordKey = tuple[str, str, str]
"""(account, route path, Idempotency-Key)."""


@dataclass(frozen=True)
class Claim:
    """This request holds ``key`` until it calls `IdempotencyRecords.settle`."""

    key: RecordKey
    done: asyncio.Future[None]


@dataclass(frozen=True)
class Answer:
    """The stored answer of the first request made with a key."""

    status: int
    body: bytes
    content_type: str


class IdempotencyRecords:
    """Claims and stored answers; every method runs on the server's loop."""

    def __init__(self) -> None:
        self._entries: dict[RecordKey, Answer | asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return sum(isinstance(e, Answer) for e in self._entries.values())

    async def claim(self, key: RecordKey) -> Claim | Answer:
        """A `Claim` when this request now holds the key (it must `settle` it), else
        the answer stored for the key. Waits while another request holds it."""
        while True:
            entry = self._entries.get(key)
            if entry is None:
                claim = Claim(key, asyncio.get_running_loop().create_future())
                self._entries[key] = claim.done
                return claim
            if isinstance(entry, Answer):
                return entry
            await asyncio.shield(entry)

    def try_claim(self, key: RecordKey) -> Claim | None:
        """A `Claim` when nobody used ``key`` before, else ``None`` at once (single-use
        keys: a duplicate is refused whether the first request is still running or not)."""
        if key in self._entries:
            return None
        claim = Claim(key, asyncio.get_running_loop().create_future())
        self._entries[key] = claim.done
        return claim

    def settle(self, claim: Claim, answer: Answer | None) -> None:
        """End a claim: keep ``answer`` for its key, or release the key (``None``)."""
        if self._entries.get(claim.key) is claim.done:
            if answer is None:
                del self._entries[claim.key]
            else:
                self._entries[claim.key] = answer
        if not claim.done.done():
            claim.done.set_result(None)

    def forget(self, key: RecordKey) -> None:
        """Drop a stored answer (a face that releases a key after a definite failure)."""
        if isinstance(self._entries.get(key), Answer):
            del self._entries[key]

    def clear(self) -> None:
        """Forget everything; requests waiting on a claim run as first requests."""
        for entry in self._entries.values():
            if isinstance(entry, asyncio.Future) and not entry.done():
                entry.set_result(None)
        self._entries.clear()
