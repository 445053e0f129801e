"""Multi-GPU and multi-node extraction through optional extras (dask-cuda, dask-jobqueue): a missing
extra is one line saying what to install; a jobqueue cluster is built (never submitted) from the
config's options."""

import sys

import pytest
from helpers import CLIP, CNN, PATHS, SHAPES, run_main, write_config

from zoomshot.cache import compute
from zoomshot.cache.errors import PipelineError


@pytest.mark.parametrize(
    "kind, line",
    [
        ("local-cuda", "dask-cuda is not installed: pip install 'zoomshot-pipeline[cuda]'"),
        ("slurm", "dask-jobqueue is not installed: pip install 'zoomshot-pipeline[cluster]'"),
    ],
)
def test_a_missing_extra_is_one_line(tmp_path, monkeypatch, kind, line):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails, installed or not
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    write_config(tmp_path, PATHS + CLIP + CNN + SHAPES + f'cluster = "{kind}"\n', train=8, test=8, batch=8)
    code, out, err = run_main(tmp_path, "extract", "--no-progress")
    assert code == 2 and "Traceback" not in err, err
    (error,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line in error


def test_scheduler_and_cluster_together_is_one_line(tmp_path):
    write_config(tmp_path, PATHS + CLIP + CNN + SHAPES + 'cluster = "slurm"\nscheduler = "tcp://h:8786"\n')
    code, _, err = run_main(tmp_path, "extract", "--no-progress")
    assert code == 2 and "sets both scheduler (tcp://h:8786) and cluster ('slurm')" in err


def test_slurm_cluster_is_built_from_the_options_without_submitting():
    pytest.importorskip("dask_jobqueue")
    options = {
        "cores": 8,
        "memory": "64GB",
        "queue": "gpu",
        "walltime": "04:00:00",
        "job_extra_directives": ["--gres=gpu:1"],
    }
    with compute.make_cluster("slurm", options) as cluster:
        script = cluster.job_script()
        assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 04:00:00" in script
        assert "--nworkers" not in script and "--resources GPU=1" in script  # one worker per job, one task at a time
        assert not cluster.workers
    with pytest.raises(PipelineError, match="cannot start the slurm cluster .*: "):
        compute.make_cluster("slurm", {"cores": 8, "memory": "64GB", "no_such_option": 1})


def test_a_started_cluster_shards_the_splits_over_its_workers(tmp_path, monkeypatch):
    """`--cluster local-cuda` with distributed's own LocalCluster standing in for LocalCUDACluster (no GPU
    here): the cluster is started for the command and each split is cut into one shard per worker, then
    joined. (That sharded numbers equal a single process is test_extract_data's sharded test.)"""
    import h5py

    monkeypatch.setitem(compute.CLUSTERS, "local-cuda", ("distributed", "LocalCluster", "distributed", "cuda"))
    write_config(
        tmp_path,
        PATHS + CLIP + CNN + SHAPES + "num_workers = 0\ncluster_options = {{ n_workers = 2, "
        'threads_per_worker = 1, processes = false, dashboard_address = ":0" }}\n',
        train=32,
        test=16,
        batch=8,
    )
    code, out, err = run_main(tmp_path, "extract", "--no-progress", "--cluster", "local-cuda")
    assert code == 0, err
    assert out.count("shard done") == 4  # 2 splits x 2 workers
    features = tmp_path / "out/cache/features"
    assert len(list(features.glob("*.shard*"))) == 8  # 2 splits x 2 encoders x 2 shards
    joined = [p for p in features.glob("*.h5") if ".shard" not in p.name]
    assert len(joined) == 4
    for p in joined:
        with h5py.File(p) as f:
            assert f["features"].is_virtual and f["index"].shape[0] == (32 if "_train_" in p.name else 16)
