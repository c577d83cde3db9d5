"""pipelines.cluster: features and scoring on a Dask LocalCluster (loopback, 2 workers)
give the local run's results, and a worker killed mid-run loses no patient."""

import os
import signal
import threading
import time

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from cellfeat.data import load_cohort  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.features import run_features  # noqa: E402


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
    cache = tmp_path / "cache"
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]

        def killer():
            deadline = time.time() + 60
            while time.time() < deadline and len(list(cache.glob("*.json"))) < 4:
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)

        t = threading.Thread(target=killer)
        t.start()
        res = run_features(load_cohort(synthetic_root), tmp_path, progress=False,
                           gallery=False, client=client)
        t.join()
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next test
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cells.parquet"), local_cells)
    # the killed worker held tasks: they were re-run, and the run says which
    assert res["retried"] and set(res["retried"]) <= set(local_cells["ID"])
