"""pipelines.bench: the measuring helpers run and return sane figures on synthetic data."""

from cellfeat.data import load_cohort
from pipelines.bench import bench_breakdown, bench_segmentation


def test_breakdown_reports_every_step(synthetic_root):
    out = bench_breakdown(load_cohort(synthetic_root), repeats=1, every=5)
    assert out["images"] > 10
    for step in ("read_decode", "segmentation", "features", "crop"):
        assert 0 < out[step] < 1000  # ms per image


def test_segmentation_accuracy_table():
    out = bench_segmentation(n_train=2)
    for method in ("otsu", "kmeans"):
        assert out[method]["iou_median"] > 0.9 and 0 < out[method]["ok_share"] <= 1
