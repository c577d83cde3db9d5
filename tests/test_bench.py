"""pipelines.bench.speed: the measuring helpers run and return sane figures on synthetic data."""

from cellfeat.data import load_cohort
from pipelines.bench.speed import bench_breakdown, bench_command, bench_segmentation


def test_breakdown_reports_every_step(synthetic_root):
    out = bench_breakdown(load_cohort(synthetic_root), repeats=1, every=5)
    assert out["images"] > 10
    for step in ("read_decode", "ruler", "segmentation", "features", "crop"):
        assert 0 < out[step] < 1000  # ms per image


def test_features_command_time_adds_up(synthetic_root):
    """Issue 30: the whole command's wall time splits into start-up and scan, the per-image
    loop its own line gives, and the rest; each part is there and positive."""
    out = bench_command(synthetic_root, 1)
    assert out["wall_s"] > 0 and out["cpu_s"] > 0
    assert 0 < out["to_cohort_line_s"] < out["wall_s"] and 0 < out["loop_s"] < out["wall_s"]
    assert out["rest_s"] == out["wall_s"] - out["to_cohort_line_s"] - out["loop_s"]


def test_segmentation_accuracy_table(tmp_path):
    out = bench_segmentation(n_train=2, n_hard=6, wbc=tmp_path / "absent", n_palette=10)
    # no wbc-tecom rows without the folder
    assert set(out) == {"synthetic", "synthetic hard", "synthetic palette"}
    for name, rows in out.items():
        for method in ("otsu", "kmeans"):
            r = rows[method]
            assert r["n"] == {"synthetic palette": 10, "synthetic hard": 6}.get(name, r["n"])
            assert r["nucleus_median"] > 0.9
            # the whole cell is not asked of random palettes (no target; median 0.84 on 300)
            assert r["cell_median"] > 0.8 or name == "synthetic palette"
            assert r["nucleus_p5"] <= r["nucleus_p10"] <= r["nucleus_median"]
            assert 0 < r["ok_share"] <= 1


def test_large_cell_gallery(synthetic_root, tmp_path):
    import pandas as pd

    from pipelines.bench.speed import large_cell_gallery

    c = load_cohort(synthetic_root)
    rows = [{"ID": pid, "FILE": f.name, "QC_STATUS": "ok", "Cell_Shape_Area": float(i)}
            for i, (pid, fs) in enumerate(c.images.items()) for f in fs[:1]]
    pd.DataFrame(rows).to_parquet(tmp_path / "cells.parquet")
    picked = large_cell_gallery(c, tmp_path / "cells.parquet", tmp_path / "g.png", n=4)
    # the four rows with the largest areas, largest first
    assert picked == [f"{r['ID']}/{r['FILE']}" for r in rows[::-1][:4]]
    assert (tmp_path / "g.png").stat().st_size > 1000
