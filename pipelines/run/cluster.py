"""Run the per-patient feature tasks on a Dask distributed cluster.

Two set-ups (see the README):

``shared`` (default)
    Workers see the cohort and the feature folder at the same paths as the client (a
    shared filesystem: NFS, a cluster volume). Each task reads its patient's images,
    checks and fills the content-addressed cache itself; the client only receives the
    feature rows.
``bytes``
    Workers see nothing of the client's disk: the client reads each patient's bytes, checks
    its own cache, ships the bytes with the task and stores the result. Submission is
    windowed, so the client holds only a few patients' bytes at a time.

Either way results are yielded in patient order, so ``cells.parquet`` is the same as the
local run's. A task lost with a dying worker is re-run by the scheduler; tasks that raised
are retried (``retries``). :func:`retried_keys` reads from the scheduler which tasks ran
more than once, for the stage's report.
"""

from __future__ import annotations

from pathlib import Path

from .tasks import FeatureSettings, cache_store, compute_patient, process_patient, read_patient


def connect(address: str):
    """A ``distributed.Client`` for ``address``; a clear error if Dask is not installed."""
    try:
        from distributed import Client
    except ImportError:
        from ..io import StageError

        raise StageError("--scheduler needs Dask: pip install 'cellfeat[dask]'") from None
    return Client(address, timeout="30s")


def dask_results(client, patients, settings: FeatureSettings, cache_dir: Path, *,
                 mode: str = "shared", retries: int = 2, window: int | None = None,
                 submitted: dict | None = None):
    """Yield ``(cells, meta, crops)`` per patient, in the order of ``patients``.

    Parameters
    ----------
    client : distributed.Client
    patients : list of (patient ID, list of image paths)
    mode : {"shared", "bytes"}
    window : int, optional
        Tasks in flight at once (default: 4 per worker thread).
    submitted : dict, optional
        Receives task key -> patient ID for every task sent to the cluster (for
        :func:`retried_keys`).
    """
    import uuid

    from distributed import as_completed

    if mode not in ("shared", "bytes"):
        raise ValueError(f"mode must be 'shared' or 'bytes', got {mode!r}")
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = 4 * threads
    order = {}
    results = {}
    pending = iter(enumerate(patients))
    keys: dict[int, str] = {}

    def submit():
        for i, (pid, files) in pending:
            if mode == "shared":
                fut = client.submit(process_patient, pid, list(files), settings, cache_dir,
                                    retries=retries, key=f"patient-{pid}-{uuid.uuid4().hex[:8]}")
            else:
                k, names, blobs, hit = read_patient(pid, files, settings, cache_dir)
                if hit is not None:
                    results[i] = hit
                    continue
                keys[i] = k
                fut = client.submit(compute_patient, pid, names, blobs, settings,
                                    retries=retries, key=f"patient-{pid}-{uuid.uuid4().hex[:8]}")
            order[fut.key] = i
            if submitted is not None:
                submitted[fut.key] = pid
            return fut
        return None

    nxt = 0

    def ready():  # the finished results that continue the patient order
        nonlocal nxt
        while nxt in results:
            yield results.pop(nxt)
            nxt += 1

    queue = as_completed()
    for _ in range(window):
        fut = submit()
        if fut is None:
            break
        queue.add(fut)
    yield from ready()  # cache hits at the head of the list (bytes mode)
    for fut in queue:
        i = order[fut.key]
        res = fut.result()
        fut.release()
        if mode == "bytes":
            cache_store(cache_dir, keys.pop(i), *res)
        results[i] = res
        new = submit()
        if new is not None:
            queue.add(new)
        yield from ready()
    yield from ready()  # cache hits after the last task (bytes mode)


def retried_keys(client, keys) -> list[str]:
    """Task keys the scheduler sent to a worker more than once (worker lost, or retried)."""
    try:
        story = client.story(*keys, on_error="ignore")
    except Exception:  # an older scheduler without stories: nothing to report
        return []
    # scheduler events read (source, key, start, finish, recommendations, stimulus, time)
    starts: dict[str, int] = {}
    for event in story:
        if len(event) > 3 and event[0] == "scheduler" and event[3] == "processing":
            starts[event[1]] = starts.get(event[1], 0) + 1
    return sorted(k for k, n in starts.items() if n > 1)
