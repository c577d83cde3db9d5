"""pipelines.run.cluster: features and scoring on a Dask LocalCluster (loopback, 2 workers)
give the local run's results, and a worker killed mid-run loses no patient."""

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from cellfeat.data import load_cohort  # noqa: E402
from pipelines.run.cli import main  # noqa: E402
from pipelines.run.features import run_features  # noqa: E402

pytestmark = pytest.mark.slow  # starts Dask LocalClusters (about 50 s)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def local_cells(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_features(load_cohort(synthetic_root), out, n_jobs=1, progress=False, gallery=False)
    return pd.read_parquet(out / "cells.parquet")


@pytest.mark.parametrize("mode", ["shared", "bytes"])
def test_cluster_features_equal_local(cluster, synthetic_root, local_cells, tmp_path, mode):
    with distributed.Client(cluster) as client:
        res = run_features(load_cohort(synthetic_root), tmp_path, progress=False,
                           gallery=False, client=client, dask_mode=mode)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cells.parquet"), local_cells)
    assert res["retried"] == []


def test_cluster_scoring_equals_local(cluster, synthetic_root, tmp_path):
    common = ["--features", str(tmp_path / "f"), "--model", str(tmp_path / "m.skops"),
              "--jobs", "1"]
    assert main(["--quiet", "train", str(synthetic_root), *common, "--report",
                 str(tmp_path / "r"), "--folds", "3", "--repeats", "1", "--candidates",
                 "clinical-logreg", "bags-logreg"]) == 0
    assert main(["--quiet", "score", str(synthetic_root), *common, "--out",
                 str(tmp_path / "local.csv")]) == 0
    common[1] = str(tmp_path / "f-dask")  # a fresh feature folder: all work on the cluster
    assert main(["--quiet", "score", str(synthetic_root), *common, "--out",
                 str(tmp_path / "dask.csv"), "--scheduler", cluster.scheduler_address]) == 0
    assert (tmp_path / "local.csv").read_bytes() == (tmp_path / "dask.csv").read_bytes()


def test_worker_killed_mid_run_loses_nothing(cluster, synthetic_root, local_cells, tmp_path):
    """A worker dies (SIGKILL) holding a task: after storing the 4th cache entry, before
    returning it. No patient is lost, the table is the local run's, and the run names the
    re-run task. The kill is triggered by the file, not by a delay, so it lands at the same
    point of the run on a fast or a loaded machine."""

    def arm(marker: str, after: int):  # in each worker (local: pickled by value)
        import os
        import signal
        from pathlib import Path

        import pipelines.run.tasks as tasks

        store = tasks.cache_store

        def cache_store(cache_dir, *args):
            store(cache_dir, *args)
            if len(list(Path(cache_dir).glob("*.json"))) >= after:
                try:  # one worker only: the first to create the marker
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)

        cache_store.armed = store
        tasks.cache_store = cache_store

    def disarm():
        import pipelines.run.tasks as tasks

        tasks.cache_store = getattr(tasks.cache_store, "armed", tasks.cache_store)

    (tmp_path / "out").mkdir()
    marker = tmp_path / "killed"
    with distributed.Client(cluster) as client:
        client.run(arm, str(marker), 4)
        try:
            res = run_features(load_cohort(synthetic_root), tmp_path / "out", progress=False,
                               gallery=False, client=client)
        finally:
            client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
            client.run(disarm)
    assert marker.exists()  # a worker was killed
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "cells.parquet"),
                                  local_cells)
    # the killed worker held at least the task whose entry it had just stored: re-run
    assert res["retried"] and set(res["retried"]) <= set(local_cells["ID"])
