"""Dynamic batching: requests that arrive within `max_wait_ms` of each other run as one batch.

* `Worker`: the one thread that runs the model (JAX, PyTorch and TensorFlow calls are serialised
  there; the event loop stays free to accept and answer requests meanwhile).
* `Job`: one request's work (its rows, its group key, its result or its stream of events).
* `Batcher`: an asyncio task per kind of work. It waits for the first job, then up to
  `max_wait_ms` for more with the same key (compatible settings) until `max_batch_size` rows,
  and hands the batch to its `run` coroutine. Jobs with other keys wait for the next round,
  in arrival order. A job whose client went away or timed out is skipped.

>>> import asyncio
>>> worker = Worker()
>>> async def double(key, jobs):
...     out = await worker.run(lambda: [2 * j.payload for j in jobs])
...     for job, value in zip(jobs, out):
...         job.resolve(value)
>>> async def main():
...     batcher = Batcher(double, max_batch_size=8, max_wait_ms=5)
...     jobs = [Job(i) for i in range(3)]
...     results = await asyncio.gather(*(batcher.submit(j) for j in jobs))
...     return results, batcher.batches
>>> asyncio.run(main())
([0, 2, 4], 1)
>>> worker.close()
"""

import asyncio
import concurrent.futures
import itertools
import time


class Worker:
    """A single thread that runs the model calls, one at a time."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf-serving")

    async def run(self, fn, *args):
        """Run fn(*args) on the worker thread; the result (or exception) when done."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self):
        self._pool.shutdown(wait=True)


class Job:
    """One request's share of a batch.

    payload: what `run` needs (token ids, settings); key: jobs with equal keys may share a
    batch; size: rows it adds to a batch (texts in the request).
    """

    _ids = itertools.count()

    def __init__(self, payload, key=None, size=1):
        self.payload, self.key, self.size = payload, key, int(size)
        self.id = next(self._ids)
        self.arrived = time.monotonic()
        self.cancelled = False
        self.future = None  # set by Batcher.enqueue (in the running loop)
        self.events = None  # streaming jobs: an asyncio.Queue of chunks

    def resolve(self, value):
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, error):
        if not self.future.done():
            self.future.set_exception(error)


class Batcher:
    """Collects jobs into batches and runs them with `run(key, jobs)` (a coroutine that
    resolves each job), one batch at a time.

    max_batch_size: rows per batch (a job larger than this runs alone); max_wait_ms: how long
    the first job of a batch waits for company.
    """

    def __init__(self, run, max_batch_size=32, max_wait_ms=5):
        self._run = run
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.pending = []
        self.batches = 0
        self.running = 0
        self._loop = self._task = self._arrival = None

    def _start(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._arrival = loop, asyncio.Event()
            self._task = loop.create_task(self._collect())

    def enqueue(self, job):
        """Queue a job (its future is created here); the caller awaits job.future."""
        self._start()
        job.future = self._loop.create_future()
        self.pending.append(job)
        self._arrival.set()
        return job

    async def submit(self, job):
        """Queue a job and wait for its result."""
        return await self.enqueue(job).future

    def _rows(self, key):
        return sum(j.size for j in self.pending if j.key == key and not j.cancelled)

    async def _collect(self):
        while True:
            self.pending = [j for j in self.pending if not j.cancelled]
            if not self.pending:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            first = self.pending[0]
            deadline = first.arrived + self.max_wait
            while self._rows(first.key) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch, rows = [], 0
            for job in self.pending:
                if job.key != first.key or job.cancelled:
                    continue
                if batch and rows + job.size > self.max_batch_size:
                    break
                batch.append(job)
                rows += job.size
            taken = {j.id for j in batch}
            self.pending = [j for j in self.pending if j.id not in taken]
            if not batch:
                continue
            self.batches += 1
            self.running += len(batch)
            try:
                await self._run(first.key, batch)
            except Exception as error:  # a failed batch fails its jobs, not the batcher
                for job in batch:
                    job.fail(error)
            finally:
                self.running -= len(batch)

    async def stop(self):
        """Stop collecting (at shutdown, after the in-flight requests were answered)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self.pending:
            job.fail(RuntimeError("the server is shutting down"))
        self.pending = []
