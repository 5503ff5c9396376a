"""The result memo across swaps: stale requests, answers prepared for the next state."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from app.serving import ResultMemo, ServingState


def state(version: int) -> ServingState:
    """A serving state; the memo reads nothing but its identity and serial."""
    none = cast(Any, None)
    return ServingState(version, none, none, np.zeros(0, np.int64), np.zeros(0, bool))


def test_a_request_on_an_older_state_neither_reads_nor_clears_the_memo() -> None:
    memo = ResultMemo(4)
    old, new = state(1), state(2)
    memo.put(old, "k", "old answer")
    assert memo.get(old, "k") == "old answer"
    assert memo.get(new, "k") is None  # swapped: a new memo
    memo.put(new, "k", "new answer")
    assert memo.get(old, "k") is None  # a request that started before the swap: a miss ...
    memo.put(old, "k", "late answer")  # ... whose answer is not stored
    assert memo.get(new, "k") == "new answer"
    assert (memo.hits, memo.misses) == (2, 2)


def test_prepared_answers_are_adopted_by_the_first_request_on_their_state() -> None:
    memo = ResultMemo(2)
    old, new = state(1), state(2)
    for key in "abc":
        memo.put(old, key, key.upper())  # room for two: "a" goes
    assert memo.recent(5) == ["b", "c"]  # least recently used first
    assert memo.recent(1) == ["c"] and memo.recent(0) == []
    memo.prepare(new, {"x": 1, "y": 2, "z": 3})
    assert memo.get(old, "c") == "C"  # the old state serves until the swap
    assert memo.get(new, "y") == 2  # adopted ...
    assert len(memo) == 2 and memo.get(new, "x") is None  # ... bounded, least recent out
    assert memo.get(new, "z") == 3


def test_answers_prepared_for_another_state_are_not_adopted() -> None:
    memo = ResultMemo(4)
    memo.put(state(1), "k", "old")
    memo.prepare(state(2), {"k": "for a state never swapped in"})
    newer = state(3)
    assert memo.get(newer, "k") is None
    assert len(memo) == 0
