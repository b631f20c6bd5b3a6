"""The bench grid as jobs: a local process pool and a real Slurm cluster (submitit arrays) give
the inline run's cells; failures, cancelled tasks, reruns, ``--no-wait`` + ``gather``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.store.results import ResultStore
from logitnorm_plugin.workflows import bench, executors
from logitnorm_plugin.workflows.executors import ExecutorSpec
from logitnorm_plugin.workflows.shards import merge_shards

# the digits grid, kept tiny: CPU, one epoch, one seed, two logits detectors (16 cells)
GRID = ["--epochs", "1", "--seeds", "0", "--detectors", "msp,energy", "--no-plots"]
KEY = ("Model", "Detector", "Dataset")


def cli(*args, cwd, timeout=300):
    beside = Path(sys.executable).parent / "logitnorm-ood"
    script = str(beside) if beside.exists() else shutil.which("logitnorm-ood")
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ))


def cells(out: Path) -> dict:
    rows = json.loads((Path(out) / "results.json").read_text())["rows"]
    return {tuple(r[k] for k in KEY): r for r in rows}


def same_cells(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        # Model is the label and Run the run folder's path under --out: where, not what
        where = ("Model", "Run")
        metrics = {k: v for k, v in a[key].items() if k not in where}
        assert metrics == {k: v for k, v in b[key].items() if k not in where}, key


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    """The grid run inline (today's bench): the reference cells."""
    root = tmp_path_factory.mktemp("inline")
    done = cli("bench", *GRID, "--no-progress", "--out", "out", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "out"


@pytest.mark.slow
def test_local_pool_gives_the_inline_cells(inline, tmp_path):
    done = cli("bench", *GRID, "--out", "out", "--executor", "local", "--workers", "2",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    same_cells(cells(inline), cells(out))
    # the table is the inline one (all but the footer, which names the command and the time)
    assert (out / "table.md").read_text().splitlines()[:-1] == (
        inline / "table.md").read_text().splitlines()[:-1]
    assert "[4/4]" in done.stderr and "logs in" in done.stderr
    assert sorted(p.name for p in (out / "workflow" / "logs").iterdir()) == [
        "evaluate-digits-cross_entropy-s0.log", "evaluate-digits-logitnorm-s0.log",
        "train-digits-cross_entropy-s0.log", "train-digits-logitnorm-s0.log"]
    assert list((out / "workflow" / "shards").iterdir()) == []  # merged, then removed
    footer = (out / "table.md").read_text().splitlines()[-1]
    assert "2 of 2 models trained in this run" in footer and "16 of 16 cells computed" in footer
    # the same command again: nothing to do, no job started
    again = cli("bench", *GRID, "--out", "out", "--executor", "local", "--workers", "2",
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[1/" not in again.stderr and "0 of 2 models trained" in (
        out / "table.md").read_text()
    # --force: both models evaluated again by jobs, their cells replace the stored ones
    with ResultStore(out / "results.sqlite") as store:
        runs_before = len(store.runs())
    forced = cli("bench", *GRID, "--out", "out", "--executor", "local", "--workers", "2",
                 "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "[2/2] evaluate" in forced.stderr and "train " not in forced.stderr
    with ResultStore(out / "results.sqlite") as store:
        assert store.count() == 16
        assert all(r["run_id"] > runs_before for r in store.rows(with_ids=True))
    same_cells(cells(inline), cells(out))


@pytest.mark.slow
def test_slurm_gives_the_inline_cells(inline, tmp_path, slurm_cluster):  # noqa: F811
    done = cli("bench", *GRID, "--out", "out", "--executor", "slurm", "--slurm-partition",
               "debug", "--slurm-arg", "slurm_array_parallelism=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    same_cells(cells(inline), cells(tmp_path / "out"))
    assert "submitted 2 training and 2 evaluation jobs to Slurm" in done.stderr
    assert "[4/4] evaluate " in done.stderr  # evaluations wait for the trainings
    for name in ("train cross_entropy/s0", "train logitnorm/s0", "evaluate cross_entropy/s0",
                 "evaluate logitnorm/s0"):
        assert f"{name}: COMPLETED on {slurm_cluster.host}" in done.stderr, name
    logs = tmp_path / "out" / "workflow" / "slurm"
    assert len(list(logs.glob("*_log.out"))) == 4


@pytest.mark.slow
def test_cancelled_task_is_reported_and_the_rerun_completes_only_it(inline, tmp_path,
                                                                    slurm_cluster):  # noqa: F811
    command = ["bench", *GRID, "--out", "out", "--executor", "slurm",
               "--slurm-array-parallelism", "1"]
    script = Path(sys.executable).parent / "logitnorm-ood"
    driver = subprocess.Popen([str(script), *command], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # one task at a time: the second training task waits while the first one runs
        task = None
        deadline = time.monotonic() + 120
        while task is None and time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j %T"], text=True,
                                   capture_output=True).stdout.split()
            ids = [queue[i] for i in range(0, len(queue), 3)]
            task = next((i for i in sorted(ids) if i.endswith("_1")), None)
            time.sleep(0.1)
        assert task is not None, "the training array never showed up in squeue"
        subprocess.run(["scancel", task], check=True)
        stdout, stderr = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 2, stderr
    assert "Traceback" not in stderr.split("error:")[-1]
    failed = [line for line in stderr.splitlines() if line.startswith("  ")
              and (": CANCELLED: " in line or ": NOT RUN: " in line)]
    assert len(failed) == 2, stderr  # its training (cancelled) and its evaluation (not run)
    assert f"train logitnorm/s0 (Slurm job {task})" in stderr
    assert "CANCELLED" in stderr and "rerun `logitnorm-ood bench" in stderr
    out = tmp_path / "out"
    kept = (out / "runs" / "digits-cross_entropy-s0" / "model.pt").stat().st_mtime_ns
    with ResultStore(out / "results.sqlite") as store:
        assert store.count() == 8  # the finished model's cells are in

    again = cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "submitted 1 training and 1 evaluation jobs" in again.stderr
    assert (out / "runs" / "digits-cross_entropy-s0" / "model.pt").stat().st_mtime_ns == kept
    same_cells(cells(inline), cells(out))


@pytest.mark.slow
def test_no_wait_then_gather(inline, tmp_path, slurm_cluster):  # noqa: F811
    done = cli("bench", *GRID, "--out", "out", "--executor", "slurm", "--no-wait",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "logitnorm-ood gather out" in done.stdout
    out = tmp_path / "out"
    assert not (out / "results.json").exists()
    busy = cli("bench", *GRID, "--out", "out", "--executor", "slurm", cwd=tmp_path)
    assert busy.returncode == 2 and "logitnorm-ood gather" in busy.stderr
    gathered = cli("gather", "out", cwd=tmp_path)
    assert gathered.returncode == 0, gathered.stderr
    assert "| cross_entropy | msp" in gathered.stdout
    same_cells(cells(inline), cells(out))
    assert not (out / "workflow" / "submission.json").exists()
    nothing = cli("gather", "out", cwd=tmp_path)
    assert nothing.returncode == 2 and "holds no submission" in nothing.stderr


@pytest.mark.slow
def test_an_interrupted_driver_is_gathered(inline, tmp_path, slurm_cluster):  # noqa: F811
    script = Path(sys.executable).parent / "logitnorm-ood"
    driver = subprocess.Popen([str(script), "bench", *GRID, "--out", "out", "--executor",
                               "slurm"], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    submission = tmp_path / "out" / "workflow" / "submission.json"
    try:
        deadline = time.monotonic() + 120
        while not submission.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert submission.is_file()
        driver.send_signal(signal.SIGINT)  # a login session that ends, Ctrl-C
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "interrupted" in stderr
    gathered = cli("gather", "out", cwd=tmp_path)
    assert gathered.returncode == 0, gathered.stderr
    same_cells(cells(inline), cells(tmp_path / "out"))


@pytest.mark.slow
def test_a_job_that_raises_reports_its_log(tmp_path, slurm_cluster):  # noqa: F811
    # outlier exposure reads its outliers inside the training job: one of them is no image
    bad = tmp_path / "outliers" / "noise"
    bad.mkdir(parents=True)
    (bad / "a.png").write_text("not an image")
    done = cli("bench", "--epochs", "1", "--seeds", "0", "--losses", "outlier_exposure",
               "--outliers", str(tmp_path / "outliers"), "--detectors", "msp", "--no-plots",
               "--out", "out", "--executor", "slurm", cwd=tmp_path)
    assert done.returncode == 2
    error = done.stderr.split("logitnorm-ood bench: error:")[1]
    assert "Traceback" not in error
    lines = [line.strip() for line in error.splitlines() if line.startswith("  ")]
    assert len(lines) == 2, error
    assert lines[0].startswith("train outlier_exposure/s0 (Slurm job ")
    assert f"on {slurm_cluster.host}: FAILED: " in lines[0] and "CorruptDataError" in lines[0]
    assert "a.png" in lines[0] and "log: " in lines[0]
    assert lines[1].startswith("evaluate outlier_exposure/s0") and "NOT RUN" in lines[1]
    # the last lines of its log come before, indented
    assert "last lines of train outlier_exposure/s0's log" in done.stderr
    assert "    logitnorm_plugin._core.errors.CorruptDataError" in done.stderr


@pytest.mark.slow
def test_preempted_training_is_requeued_and_resumes_from_its_checkpoint(tmp_path,
                                                                        slurm_cluster):  # noqa: F811
    command = ["bench", "--epochs", "20", "--seeds", "0", "--losses", "cross_entropy",
               "--detectors", "msp", "--no-plots", "--out", "out", "--executor", "slurm"]
    script = Path(sys.executable).parent / "logitnorm-ood"
    driver = subprocess.Popen([str(script), *command], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = tmp_path / "out" / "runs" / "digits-cross_entropy-s0"
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = subprocess.run(["squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i"],
                                 capture_output=True, text=True).stdout.split()
        assert len(running) == 1, running  # the training job, after its first epoch
        # what Slurm sends before it preempts a job or its time runs out (submitit's signal)
        subprocess.run(["scancel", "--signal=USR2", running[0]], check=True)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    job = subprocess.run(["scontrol", "-o", "show", "job", running[0]], capture_output=True,
                         text=True).stdout
    assert "Restarts=1" in job and "JobState=COMPLETED" in job
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "workflow" / "slurm").glob(
        "*_log.err"))
    assert "this job is preempted" in logs
    assert f"resuming {Path('out') / 'runs' / 'digits-cross_entropy-s0'} after epoch" in logs
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()]
    assert epochs == list(range(1, 21))
    assert "| cross_entropy | msp" in stdout


@pytest.mark.slow
def test_a_killed_pool_worker_is_reported_and_its_training_resumes(tmp_path):
    command = ["bench", "--epochs", "20", "--seeds", "0", "--losses", "cross_entropy",
               "--detectors", "msp", "--no-plots", "--out", "out", "--executor", "local"]
    script = Path(sys.executable).parent / "logitnorm-ood"
    driver = subprocess.Popen([str(script), *command], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = tmp_path / "out" / "runs" / "digits-cross_entropy-s0"
    status = tmp_path / "out" / "workflow" / "status" / "train-digits-cross_entropy-s0.json"
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)  # the OOM killer
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 2, stderr
    error = stderr.split("logitnorm-ood bench: error:")[1]
    assert "Traceback" not in error
    assert "train cross_entropy/s0 on " in error and ": KILLED: its worker process died" in error
    assert not (run / "model.pt").exists()

    again = cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "out" / "workflow" / "logs" / "train-digits-cross_entropy-s0.log")
    assert "resuming out/runs/digits-cross_entropy-s0 after epoch" in log.read_text()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()]
    assert epochs == list(range(1, 21))


TUNE = ["tune-t", "--dataset", "digits", "--grid", "0.04,0.08", "--seeds", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def tuned_inline(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    done = cli(*TUNE, "--out", "out", "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads((root / "out" / "recommended_t.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_tune_t_points_as_jobs_give_the_inline_record(executor, tuned_inline, tmp_path,
                                                      request):
    if executor == "slurm":
        request.getfixturevalue("slurm_cluster")
    done = cli(*TUNE, "--out", "out", "--executor", executor, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "recommended_t.json").read_text())
    assert record["chosen_t"] == tuned_inline["chosen_t"]
    assert record["results"] == tuned_inline["results"]  # every point's metrics, bit for bit
    assert "tune-t: [2/2] train t=" in done.stderr
    assert record["points"] == {"total": 2, "computed": 2, "reused": 0}


# -- no cluster needed -------------------------------------------------------------------------


def test_options_are_checked():
    with pytest.raises(UserError, match="--workers and --jobs-per-gpu go with --executor local"):
        ExecutorSpec("slurm", workers=2)
    with pytest.raises(UserError, match="go with --executor slurm"):
        ExecutorSpec("local", wait=False)
    with pytest.raises(UserError, match="Did you mean 'slurm'"):
        ExecutorSpec("slurn")
    with pytest.raises(UserError, match="jobs-per-gpu must be >= 1"):
        ExecutorSpec("local", jobs_per_gpu=0)


def test_missing_submitit_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError) as info:
        executors.import_submitit()
    assert str(info.value) == ('--executor slurm needs submitit: pip install '
                               '"logitnorm-plugin[cluster]"')


def test_unknown_slurm_parameter_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    arrays = executors.SlurmArrays(ExecutorSpec("slurm", slurm=(("slurm_parttion", "x"),)),
                                   tmp_path)
    with pytest.raises(UserError, match="--slurm-arg: .*slurm_parttion"):
        arrays._executor()


def test_shards_merge_once_and_keep_stored_cells(inline, tmp_path):
    # a shard is a store: the inline store itself, copied as one, merges into an empty store
    out = tmp_path / "out"
    shards = out / "workflow" / "shards"
    shards.mkdir(parents=True)
    shutil.copy(inline / "results.sqlite", shards / "a.sqlite")
    shutil.copy(inline / "results.sqlite", shards / "b.sqlite")
    (shards / ".c.sqlite.abcdefgh.tmp").write_text("left by a killed job")
    first = merge_shards(out, remove_temporaries=True)
    assert (first.shards, first.added, first.already) == (2, 16, 16)
    assert list(shards.iterdir()) == []
    with ResultStore(out / "results.sqlite") as store, \
            ResultStore(inline / "results.sqlite") as ref:
        assert store.count() == 16
        assert len(store.runs()) == len(ref.runs())  # the same provenance record once
        assert store.rows() == ref.rows()


def test_non_inline_executors_refuse_what_they_cannot_split(tmp_path):
    with pytest.raises(UserError, match="--models"):
        bench.run(models=["x"], out=tmp_path / "o", executor=ExecutorSpec("local"),
                  progress=False)


def test_cli_option_errors_are_one_line(tmp_path):
    for args, expected in (
        (["--workers", "2"], "--workers and --jobs-per-gpu go with --executor local"),
        (["--executor", "local", "--no-wait"], "go with --executor slurm"),
        (["--executor", "slurm", "--slurm-arg", "partition"], "--slurm-arg expects KEY=VALUE"),
    ):
        done = cli("bench", *args, "--out", "out", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("logitnorm-ood bench: error: "), lines
        assert expected in done.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_slurm_without_sbatch_says_so(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    script = Path(sys.executable).parent / "logitnorm-ood"
    done = subprocess.run([str(script), "bench", "--executor", "slurm", "--out", "out"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2
    assert "sbatch is not on PATH" in done.stderr and "Traceback" not in done.stderr


def test_local_workers_are_pinned_to_one_gpu_each(monkeypatch):
    import multiprocessing

    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(6):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        executors._pin(counter, 3, 2)  # 3 GPUs, 2 jobs per GPU
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "0", "1", "1", "2", "2"]
