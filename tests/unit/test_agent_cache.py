"""The answer cache: TTL countdown, LRU bound, stale window, all on a hand-moved clock."""

from __future__ import annotations

from agent.cache import Cache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


KEY = (b"\x01a\x00", 1, 1)


def test_fresh_entry_reports_its_age() -> None:
    clock = Clock()
    cache: Cache[str] = Cache(10, clock)
    cache.put(KEY, "v", 60)
    assert cache.get(KEY) == ("v", 0)
    clock.now += 59.5
    assert cache.get(KEY) == ("v", 59)
    clock.now += 0.5
    assert cache.get(KEY) is None  # TTL over


def test_zero_ttl_is_not_kept() -> None:
    cache: Cache[str] = Cache(10, Clock())
    cache.put(KEY, "v", 0)
    assert cache.get(KEY) is None and cache.get_stale(KEY) is None


def test_ttl_is_capped() -> None:
    clock = Clock()
    cache: Cache[str] = Cache(10, clock, max_ttl=10)
    cache.put(KEY, "v", 1000)
    clock.now += 10
    assert cache.get(KEY) is None


def test_stale_window() -> None:
    clock = Clock()
    cache: Cache[str] = Cache(10, clock, max_stale=100)
    cache.put(KEY, "v", 10)
    assert cache.get_stale(KEY) == "v"  # a fresh entry may be served too
    clock.now += 50
    assert cache.get(KEY) is None
    assert cache.get_stale(KEY) == "v"
    clock.now += 60  # 110 s after storing: past TTL + max_stale
    assert cache.get_stale(KEY) is None
    assert len(cache) == 0


def test_lru_eviction_keeps_recently_used() -> None:
    cache: Cache[int] = Cache(2, Clock())
    a, b, c = ((bytes([n]), 1, 1) for n in range(3))
    cache.put(a, 1, 60)
    cache.put(b, 2, 60)
    assert cache.get(a) is not None  # a is now more recent than b
    cache.put(c, 3, 60)
    assert len(cache) == 2
    assert cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None


def test_replacing_an_entry_refreshes_it() -> None:
    clock = Clock()
    cache: Cache[str] = Cache(10, clock)
    cache.put(KEY, "old", 10)
    clock.now += 9
    cache.put(KEY, "new", 10)
    assert cache.get(KEY) == ("new", 0)
    assert len(cache) == 1
