"""Timing on a shared machine: interleave the contenders, repeat, keep the least disturbed time.

Another process taking the CPU can only make a measurement slower, never faster, so the minimum
over repeats is the least disturbed estimate (as `timeit` does); the median is kept beside it.
"""
import time

import numpy as np


def race(contenders, rounds):
    """contenders: {name: fn(round) -> number of items}, each a whole pass. Every round runs each
    once, in a rotated order. Returns {name: {"best_s", "median_s": seconds per item, "items"}}."""
    names = list(contenders)
    times = {n: [] for n in names}
    items = {}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            items[n] = contenders[n](r)
            times[n].append((time.perf_counter() - t0) / items[n])
    return {n: {"best_s": min(t), "median_s": float(np.median(t)), "items": items[n]} for n, t in times.items()}


def race_items(contenders, n_items, rounds):
    """contenders: {name: fn(round, item)}, one item a call. Every round runs each contender over
    all items (a pass, as a data loader worker would; contenders in a rotated order), timing
    each call; an item's time is its best over the rounds.
    Returns {name: {"best_s": mean over items of the best, "median_s": median pass / n, "items"}}."""
    names = list(contenders)
    t = {n: np.zeros((rounds, n_items)) for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            for i in range(n_items):
                t0 = time.perf_counter()
                contenders[n](r, i)
                t[n][r, i] = time.perf_counter() - t0
    return {n: {"best_s": float(v.min(0).mean()), "median_s": float(np.median(v.sum(1)) / n_items), "items": n_items}
            for n, v in t.items()}
