"""One training across nodes: ``torchrun --nnodes 2`` with a c10d rendezvous, two node agents on
this machine (gloo on the CPU), against the single-node ``--nproc_per_node 2`` run."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from logitnorm_plugin.training.runs import load_trained

TRAIN = ["-m", "logitnorm_plugin.cli", "train", "--dataset", "digits", "--loss", "logitnorm",
         "--epochs", "2", "--arch-arg", "width=16", "--device", "cpu", "--deterministic",
         "--quiet"]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def test_two_node_agents_train_the_single_node_weights(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    endpoint = f"127.0.0.1:{_free_port()}"
    multi = tmp_path / "multi"
    agents = [
        subprocess.Popen(
            [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", endpoint, "--rdzv_id", "logitnorm-test", *TRAIN,
             "--out", str(multi)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
            cwd=tmp_path)
        for _ in range(2)
    ]
    try:
        outputs = [agent.communicate(timeout=240) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    for agent, (out, err) in zip(agents, outputs):
        assert agent.returncode == 0, out + err
    single = tmp_path / "single"
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", *TRAIN,
                           "--out", str(single)], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr

    card = json.loads((multi / "model.json").read_text())
    assert card["runtime"]["world_size"] == 2
    assert card["runtime"]["deterministic"] is True
    a, b = load_trained(multi), load_trained(single)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
