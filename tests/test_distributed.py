"""DDP: sharding semantics, and a real 2-process gloo run through torchrun on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logitnorm_plugin.training.distributed import DistContext, setup, shard_indices


@pytest.mark.parametrize("n, world, b", [(20, 2, 3), (21, 2, 4), (23, 4, 2), (7, 1, 3)])
def test_shards_rebuild_the_global_batches(n, world, b):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shards = [shard_indices(perm, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    padded = torch.cat([perm, perm[: (-n) % world]]) if world > 1 else perm
    steps = len(shards[0]) // b
    for i in range(steps):
        union = sorted(int(v) for s in shards for v in s[i * b : (i + 1) * b])
        assert union == sorted(padded[i * b * world : (i + 1) * b * world].tolist())
    covered = set(int(v) for s in shards for v in s)
    assert covered == set(range(n))  # padding repeats, never drops


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    assert device == torch.device("cpu")
    t = torch.ones(3)
    ctx.all_reduce_sum([t])
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert ctx.gather_objects({"a": 1}) == [{"a": 1}]
    ctx.barrier()
    ctx.close()
    assert DistContext(rank=1, world_size=2).is_main is False


def test_torchrun_two_processes_gloo(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            str(torchrun), "--standalone", "--nproc_per_node", "2",
            "-m", "logitnorm_plugin.cli", "train",
            "--dataset", "digits", "--loss", "cross_entropy", "--epochs", "4",
            "--arch-arg", "width=16", "--device", "cpu", "--quiet", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # gradients match DDP's bucket views (a one-channel batch once came out channels_last)
    assert "Grad strides do not match bucket view strides" not in proc.stderr, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    # only rank 0 prints and writes
    summary = [line for line in proc.stdout.splitlines() if "final accuracy" in line]
    assert len(summary) == 1, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "config.json", "logit_norm.png", "metrics.jsonl", "model.json",
        "model.pt",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["runtime"]["world_size"] == 2 and config["batch_size"] == 64

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and len(ckpt["rng"]["per_rank"]) == 2
    # the two ranks drew different augmentations (different streams), one shuffle
    a, b = (s["augment"] for s in ckpt["rng"]["per_rank"])
    assert not torch.equal(a, b)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    # 1,257 images padded to 1,258 and dealt to 2 ranks: 629 each, 32 per step -> 20 steps
    assert all(r["steps"] == 20 for r in records)
    losses = [r["train_loss"] for r in records]
    assert losses == sorted(losses, reverse=True)
    # 4 epochs, 3 of them the recipe's warm-up: far from done, far above chance (0.1)
    assert records[-1]["test_accuracy"] > 0.6
    for r in records:
        assert all(v == v for v in r.values())  # no NaN

    from logitnorm_plugin.training.runs import load_trained

    model, card = load_trained(out, return_card=True)
    assert card["runtime"]["world_size"] == 2 and not model.training
