"""Parallel map: `parallel_apply_generator` and `parallel_apply` run a function over an
iterable in worker processes (or threads), with bounded queues.  NumPy only."""

import queue
import random as _random
import threading
import traceback

import numpy as np


class _WorkerError:
    def __init__(self, message):
        self.message = message


def parallel_apply_generator(
    func, iterable, workers, max_queue_size, dummy=False, random_seeds=True, start_method=None
):
    """Apply `func` to every element of `iterable` in `workers` processes (threads if
    `dummy`), yielding ``(index, result)`` as results arrive (not in input order).

    Args:
        max_queue_size: how many inputs may wait for a worker (bounds memory on long or
            infinite iterables).
        random_seeds: True for a fresh NumPy/`random` seed per process, a list of seeds (one
            per worker), or False/None to leave the inherited seeds alone.

        start_method: the `multiprocessing` start method; by default ``'fork'`` where the
            platform has it (as bert4keras), so `func` may be a closure or lambda.  Use
            ``'spawn'`` or ``'forkserver'`` (with a picklable `func`) if the parent runs
            threads that forking could deadlock.

    A worker's exception is re-raised in the caller with the worker's traceback.

    >>> sorted(parallel_apply_generator(abs, [-1, -2, 3], workers=2, max_queue_size=4))
    [(0, 1), (1, 2), (2, 3)]
    """
    import multiprocessing

    if dummy:
        in_queue, out_queue = queue.Queue(max_queue_size), queue.Queue()
    else:
        if start_method is None and "fork" in multiprocessing.get_all_start_methods():
            start_method = "fork"
        ctx = multiprocessing.get_context(start_method)
        in_queue, out_queue = ctx.Queue(max_queue_size), ctx.Queue()
    if random_seeds is True:  # np.random.seed(None): fresh entropy in every process
        seeds = [None] * workers
    elif random_seeds is None or random_seeds is False:
        seeds = [False] * workers
    else:
        seeds = list(random_seeds) + [False] * max(0, workers - len(random_seeds))

    pool = []
    for k in range(workers):
        args = (func, in_queue, out_queue, seeds[k])
        if dummy:
            w = threading.Thread(target=_thread_loop, args=args, daemon=True)
        else:
            w = ctx.Process(target=_process_loop, args=args, daemon=True)
        w.start()
        pool.append(w)

    def get_result():
        while True:
            try:
                i, r = out_queue.get(timeout=1)
            except queue.Empty:
                if not any(w.is_alive() for w in pool):
                    raise RuntimeError("parallel_apply: all workers died") from None
                continue
            if isinstance(r, _WorkerError):
                raise RuntimeError("parallel_apply: func failed on input %d:\n%s" % (i, r.message))
            return i, r

    in_count = out_count = 0
    try:
        for i, d in enumerate(iterable):
            in_count += 1
            while True:
                try:
                    in_queue.put((i, d), block=False)
                    break
                except queue.Full:
                    yield get_result()  # every worker is busy: wait for one of them
                    out_count += 1
            while True:
                try:
                    i_r = out_queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(i_r[1], _WorkerError):
                    raise RuntimeError(
                        "parallel_apply: func failed on input %d:\n%s" % (i_r[0], i_r[1].message)
                    )
                yield i_r
                out_count += 1
        while out_count < in_count:
            yield get_result()
            out_count += 1
    finally:
        for _ in pool:
            try:
                in_queue.put(None, timeout=1)
            except queue.Full:
                break
        for w in pool:
            w.join(timeout=1 if dummy else 5)
            if not dummy and w.is_alive():
                w.terminate()


def _thread_loop(func, in_queue, out_queue, seed):
    # threads share the process's random state: seeding one would seed all
    _loop(func, in_queue, out_queue)


def _process_loop(func, in_queue, out_queue, seed):
    if seed is not False:  # False: keep the inherited state
        np.random.seed(seed)
        _random.seed(seed)
    _loop(func, in_queue, out_queue)


def _loop(func, in_queue, out_queue):
    while True:
        item = in_queue.get()
        if item is None:
            return
        i, d = item
        try:
            out_queue.put((i, func(d)))
        except BaseException:  # report, never leave the caller waiting
            out_queue.put((i, _WorkerError(traceback.format_exc())))


def parallel_apply(
    func,
    iterable,
    workers,
    max_queue_size,
    callback=None,
    dummy=False,
    random_seeds=True,
    unordered=True,
    start_method=None,
):
    """Apply `func` to `iterable` in parallel (see `parallel_apply_generator`).

    Returns the list of results (in input order if ``unordered=False``), or, with a
    `callback`, calls it on each result as it arrives and returns None.

    >>> parallel_apply(abs, [-1, -2, 3], workers=2, max_queue_size=4, unordered=False)
    [1, 2, 3]
    """
    generator = parallel_apply_generator(
        func, iterable, workers, max_queue_size, dummy, random_seeds, start_method
    )
    if callback is None:
        if unordered:
            return [d for _, d in generator]
        return [d for _, d in sorted(generator, key=lambda d: d[0])]
    for _, d in generator:
        callback(d)
