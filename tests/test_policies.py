"""Dispatch policies as pure units: balance, stability, keys moved, bounded loads."""

from __future__ import annotations

from collections import Counter

import pytest

from shmbus.balancer.policies import ConsistentHash, RoundRobin, hash64, policy

KEYS = [f"key-{i}".encode() for i in range(100_000)]


def shares(ch: ConsistentHash) -> dict:
    return {k: ch.owner(k) for k in KEYS}


def test_round_robin_spreads_evenly_and_skips():
    rr = RoundRobin(["a", "b", "c"])
    assert [rr.pick() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert [rr.pick(skip=lambda w: w == "b") for _ in range(4)] == ["a", "c", "a", "c"]
    assert rr.pick(skip=lambda w: True) is None
    rr.remove("a")
    assert Counter(rr.pick() for _ in range(100)) == {"b": 50, "c": 50}
    rr.add("d")
    assert Counter(rr.pick() for _ in range(99)) == {"b": 33, "c": 33, "d": 33}
    with pytest.raises(ValueError, match="already"):
        rr.add("d")


def test_round_robin_shares_a_batch_in_turn_within_room():
    rr = RoundRobin(["a", "b", "c"])
    big = {"a": 100, "b": 100, "c": 100}
    assert rr.share(10, big) == [("a", 4), ("b", 3), ("c", 3)]
    assert rr.share(1, big) == [("b", 1)]       # a took the 10th: the turn is b's
    assert rr.share(1, big) == [("c", 1)]
    # A full worker is skipped; a small one gives what it cannot take to the others.
    assert rr.share(9, {"a": 0, "b": 100, "c": 2}) == [("b", 7), ("c", 2)]
    assert rr.share(9, {"a": 100, "b": 2, "c": 0}) == [("a", 7), ("b", 2)]
    assert rr.share(9, {"a": 1, "b": 1, "c": 1}) == [("b", 1), ("c", 1), ("a", 1)]
    assert rr.share(5, {"a": 0, "b": 0, "c": 0}) == []
    assert sum(n for _, n in rr.share(7, big)) == 7


@pytest.mark.parametrize("workers, batch", [(2, 3), (3, 4), (3, 5), (4, 1), (5, 7)])
def test_round_robin_shares_are_fair_over_many_batches(workers, batch):
    """The extra messages of uneven batches go round: no worker is favoured."""
    names = [f"w{i}" for i in range(workers)]
    rr = RoundRobin(names)
    room = dict.fromkeys(names, 1000)
    total = Counter()
    for i in range(1, 101):
        for name, n in rr.share(batch, room):
            total[name] += n
        assert max(total[w] for w in names) - min(total[w] for w in names) <= 1
    assert sum(total.values()) == 100 * batch


def test_round_robin_shares_of_random_batches_stay_within_one():
    import random
    rng = random.Random(7)
    names = ["a", "b", "c"]
    rr = RoundRobin(names)
    room = dict.fromkeys(names, 10_000)
    total = Counter()
    for _ in range(1000):
        for name, n in rr.share(rng.randint(1, 20), room):
            total[name] += n
        assert max(total[w] for w in names) - min(total[w] for w in names) <= 1
    # share and pick continue one turn: one more message goes to the one behind
    behind = min(names, key=lambda w: (total[w], names.index(w)))
    if max(total.values()) != min(total.values()):
        assert rr.pick() == behind


@pytest.mark.parametrize("n, limit", [(10, 1.06), (100, 1.12)])
def test_consistent_hash_balance(n, limit):
    ch = ConsistentHash([f"w{i}" for i in range(n)])
    load = Counter(shares(ch).values())
    assert len(load) == n
    assert max(load.values()) / (len(KEYS) / n) <= limit


@pytest.mark.parametrize("n", [10, 100])
def test_join_and_leave_move_about_one_nth(n):
    ch = ConsistentHash([f"w{i}" for i in range(n)])
    before = shares(ch)
    ch.add("newcomer")
    after = shares(ch)
    moved = [k for k in KEYS if after[k] != before[k]]
    assert all(after[k] == "newcomer" for k in moved)  # only keys of the new worker
    assert abs(len(moved) / len(KEYS) - 1 / (n + 1)) <= 0.1 / (n + 1)
    ch.remove("newcomer")
    assert shares(ch) == before  # stable: membership back, ownership back
    ch.remove("w3")
    gone = shares(ch)
    moved = [k for k in KEYS if gone[k] != before[k]]
    assert all(before[k] == "w3" for k in moved)
    assert abs(len(moved) / len(KEYS) - 1 / n) <= 0.1 / n


def test_same_key_same_worker_across_instances():
    a = ConsistentHash(["x", "y", "z"])
    b = ConsistentHash(["z", "y", "x"])
    assert all(a.owner(k) == b.owner(k) for k in KEYS[:2000])
    assert a.pick("user-42") == a.pick(b"user-42") == a.owner("user-42")
    assert hash64(b"abc") == hash64(b"abc")


def test_weights_scale_shares():
    ch = ConsistentHash(["small", "big"], weights={"big": 3.0})
    load = Counter(shares(ch).values())
    assert 2.6 <= load["big"] / load["small"] <= 3.4


def test_bounded_load_caps_every_worker():
    ch = ConsistentHash([f"w{i}" for i in range(10)], load_factor=0.25)
    loads: Counter = Counter()
    hot = [b"hot"] * 5000 + KEYS[:5000]  # half the traffic on one key
    for k in hot:
        w = ch.pick(k, loads=loads)
        loads[w] += 1
    mean = len(hot) / 10
    assert max(loads.values()) <= 1.25 * mean + 1
    assert ch.pick(b"hot") == ch.owner(b"hot")  # without loads: the plain owner


def test_skip_walks_to_the_next_worker():
    ch = ConsistentHash(["a", "b", "c"])
    owner = ch.owner("k")
    other = ch.pick("k", skip=lambda w: w == owner)
    assert other is not None and other != owner
    assert ch.pick("k", skip=lambda w: True) is None
    assert ConsistentHash().pick("k") is None


def test_bad_input():
    with pytest.raises(ValueError, match="unknown policy"):
        policy("random")
    with pytest.raises(ValueError, match="vnodes"):
        ConsistentHash(vnodes=0)
    with pytest.raises(ValueError, match="load_factor"):
        ConsistentHash(load_factor=0)
    with pytest.raises(ValueError, match="weight"):
        ConsistentHash(["a"], weights={"a": -1})
    assert isinstance(policy("round-robin"), RoundRobin)
