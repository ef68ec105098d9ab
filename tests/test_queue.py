"""The scheduling policy on plain data: which waiting requests join the batch next, and admission."""

import threading
import time

import pytest

from textgen.engine.handle import Handle
from textgen.engine.queue import Entry, Queue, next_group
from textgen.errors import Cancelled, Overloaded, QueueTimeout, Unavailable
from textgen.validation import GenerationRequest

REQUEST = GenerationRequest(prompt="x", max_new_tokens=5, do_sample=False)


def entry(prompt_tokens: int, enqueued_at: float = 0.0, name: str = "") -> Entry:
    return Entry(Handle(), REQUEST, tuple(range(prompt_tokens)), enqueued_at, name)


def fresh(name: str = "") -> Entry:
    """An entry admitted now (Queue.take reads the monotonic clock)."""
    return entry(4, time.monotonic(), name)


def names(entries):
    return [e.request_id for e in entries]


def group(waiting, room=8, chunk=256, now=1.0, timeout=60.0):
    return next_group(waiting, room, chunk, now, timeout)


def test_first_come_first_served_while_they_fit_the_batch():
    waiting = [entry(4, name=n) for n in "abcde"]
    out = group(waiting, room=3)
    assert names(out.group) == ["a", "b", "c"] and names(out.waiting) == ["d", "e"] and not out.refused


def test_short_prompts_share_one_chunk_and_a_long_one_goes_alone():
    # Width x rows must fit the chunk: 3 rows of 80 fit 256, a fourth (4 x 80 = 320) waits.
    waiting = [entry(80, name=n) for n in "abcd"]
    assert names(group(waiting).group) == ["a", "b", "c"]
    long_first = [entry(1000, name="long"), entry(3, name="short")]
    assert names(group(long_first).group) == ["long"]  # chunked on its own, the short one next time
    assert names(group([entry(3, name="short"), entry(1000, name="long")]).group) == ["short"]


def test_nothing_overtakes_a_request_left_waiting():
    waiting = [entry(10, name="a"), entry(200, name="wide"), entry(2, name="small")]
    out = group(waiting)  # "wide" does not fit beside "a" (2 x 200 > 256); "small" would, but waits its turn
    assert names(out.group) == ["a"] and names(out.waiting) == ["wide", "small"]


def test_no_room_in_the_batch_takes_nobody():
    out = group([entry(4, name="a")], room=0)
    assert out.group == [] and names(out.waiting) == ["a"]


def test_cancelled_requests_are_refused_wherever_they_wait():
    waiting = [entry(4, name=n) for n in "abc"]
    waiting[0].handle.cancel()
    waiting[2].handle.cancel()
    out = group(waiting, room=0)
    assert [(e.request_id, type(err)) for e, err in out.refused] == [("a", Cancelled), ("c", Cancelled)]
    assert names(out.waiting) == ["b"]


def test_a_request_past_the_queue_timeout_is_refused_unless_it_joins_now():
    waiting = [entry(4, enqueued_at=0.0, name="old"), entry(4, enqueued_at=9.5, name="new")]
    out = group(waiting, room=0, now=10.0, timeout=5.0)
    assert [(e.request_id, type(err)) for e, err in out.refused] == [("old", QueueTimeout)]
    assert "waited more than 5 s" in out.refused[0][1].message and names(out.waiting) == ["new"]
    assert names(group(waiting, room=8, now=10.0, timeout=5.0).group) == ["old", "new"]  # room: both join


def test_admission_counts_running_and_waiting_and_refuses_past_the_limit():
    queue = Queue(max_admitted=2)
    queue.admit(fresh())
    queue.admit(fresh())
    with pytest.raises(Overloaded):
        queue.admit(fresh())
    taken = queue.take(room=1, chunk_tokens=256, queue_timeout=60)
    assert len(taken.group) == 1 and queue.stats() == {"waiting": 1, "admitted": 2}  # running still counts
    queue.done()
    queue.admit(fresh())
    assert queue.stats() == {"waiting": 2, "admitted": 2}


def test_a_closed_queue_refuses_wakes_the_engine_and_hands_back_the_waiting():
    queue = Queue(max_admitted=4)
    queue.admit(fresh("left"))
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(queue.wait_for_work(busy=lambda: False)))
    queue.take(room=1, chunk_tokens=256, queue_timeout=60)  # the line is empty: the waiter blocks
    waiter.start()
    queue.admit(fresh("late"))
    waiter.join(5)
    assert woke == [True]
    queue.close()
    assert queue.wait_for_work(busy=lambda: True) is False
    with pytest.raises(Unavailable):
        queue.admit(fresh())
    assert names(queue.drain()) == ["late"]


def test_a_request_of_n_completions_takes_n_rows_of_the_batch():
    from dataclasses import replace

    three = Entry(Handle(3), replace(REQUEST, n=3), (1, 2, 3), 0.0, "three")
    out = group([entry(4, name="a"), three, entry(4, name="b")], room=3)
    assert names(out.group) == ["a"] and names(out.waiting) == ["three", "b"]  # 1 + 3 > 3: it waits, b behind it
    assert names(group([three, entry(4, name="b")], room=4).group) == ["three", "b"]


def test_admission_counts_rows():
    from dataclasses import replace

    queue = Queue(max_admitted=4)
    queue.admit(Entry(Handle(3), replace(REQUEST, n=3), (1,), 0.0))
    with pytest.raises(Overloaded):
        queue.admit(Entry(Handle(2), replace(REQUEST, n=2), (1,), 0.0))
    queue.admit(entry(1))
    assert queue.stats()["admitted"] == 4
    queue.done(3)
    assert queue.stats()["admitted"] == 1


def test_rows_join_only_while_prompt_plus_new_tokens_fit_the_budget():
    # Each entry counts its prompt + max_new_tokens (5): 4 + 5 = 9 tokens.
    waiting = [entry(4, name=n) for n in "abcd"]
    out = next_group(waiting, 8, 256, 1.0, 60.0, token_room=27)  # three of 9 fit 27, a fourth (36) waits
    assert names(out.group) == ["a", "b", "c"] and names(out.waiting) == ["d"] and not out.refused
    assert names(next_group(waiting, 8, 256, 1.0, 60.0, token_room=26).group) == ["a", "b"]  # 27 > 26
    assert names(next_group(waiting, 8, 256, 1.0, 60.0, token_room=8).group) == []  # running rows leave no room
    assert names(next_group(waiting, 8, 256, 1.0, 60.0).group) == ["a", "b", "c", "d"]  # no budget: the batch's room


def test_a_request_the_budget_leaves_waiting_keeps_its_place_and_blocks_those_behind():
    # "big" (100 + 5) does not fit the 60 tokens left; "small" would, but nothing overtakes it.
    waiting = [entry(100, name="big"), entry(2, name="small")]
    out = next_group(waiting, 8, 256, 1.0, 60.0, token_room=60)
    assert out.group == [] and names(out.waiting) == ["big", "small"] and not out.refused
    # Still waiting past the queue timeout: refused as for a full batch, and the one behind it joins.
    late = next_group(waiting, 8, 256, 100.0, 60.0, token_room=60)
    assert [(e.request_id, type(error)) for e, error in late.refused] == [("big", QueueTimeout)]
    assert names(late.group) == ["small"]


def test_the_budget_counts_every_row_of_a_request_of_n_completions():
    from dataclasses import replace

    three = Entry(Handle(3), replace(REQUEST, n=3), (1, 2, 3), 0.0, "three")  # 3 x (3 + 5) = 24 tokens
    assert three.tokens == 24
    assert names(next_group([three], 8, 256, 1.0, 60.0, token_room=23).group) == []
    assert names(next_group([three], 8, 256, 1.0, 60.0, token_room=24).group) == ["three"]


def test_take_passes_the_budget_to_next_group():
    queue = Queue(max_admitted=8)
    for name in "ab":
        queue.admit(fresh(name))
    assert names(queue.take(8, 256, 60.0, token_room=9).group) == ["a"]  # 4 + 5 each: one fits 9
    assert names(queue.take(8, 256, 60.0).group) == ["b"]
