"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on this host.

:class:`LocalSlurm` writes a ``slurm.conf`` naming the local host into a temporary folder
(ports chosen free, every pid, spool, state and log file inside that folder), starts munged
(as the ``munge`` user, on a socket of its own), slurmctld and slurmd, waits until the node is
``idle`` and stops exactly those daemons by their pid files. The ``slurm_cluster`` session
fixture skips with the reason where Slurm is not installed (or not as root), and fails instead
under ``CI=true`` (``.ci/run`` installs ``slurm-wlm`` and ``munge``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

#: the programs the cluster needs
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")


def missing_reason() -> str | None:
    """Why no local Slurm can start here, or ``None``."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd (SlurmUser=root) needs root"
    return None


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """One single-node cluster; :meth:`start` and :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        # munged runs as `munge` and cannot enter a root-only (0700) temporary folder
        self.munge_dir = Path(tempfile.mkdtemp(prefix="logitnorm-munge-"))
        self.socket = self.munge_dir / "munge.socket"
        self.pid_files = {"munged": self.munge_dir / "munged.pid",
                          "slurmctld": self.root / "slurmctld.pid",
                          "slurmd": self.root / "slurmd.pid"}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(exist_ok=True)
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=logitnorm-test",
            f"SlurmctldHost={self.host}",
            "SlurmUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            # cred_expire: also the delay before a requeued job may start again (default 120 s)
            f"AuthInfo=socket={self.socket},cred_expire=10",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MinJobAge=600",
            f"NodeName={self.host} CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def start(self, timeout: float = 90) -> None:
        self.write_conf()
        shutil.chown(self.munge_dir, "munge", "munge")
        self._run(["runuser", "-u", "munge", "--", "munged", f"--socket={self.socket}",
                   f"--pid-file={self.pid_files['munged']}",
                   f"--log-file={self.munge_dir / 'munged.log'}",
                   f"--seed-file={self.munge_dir / 'munged.seed'}", "--force"])
        self._run(["slurmctld", "-f", str(self.conf)])
        self._run(["slurmd", "-f", str(self.conf)])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                  env=self.env)
            state = done.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle within {timeout:.0f} s "
                           f"(sinfo: {state!r}); logs in {self.root}")

    def _run(self, command) -> None:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0] if command[0] != 'runuser' else 'munged'} did not "
                               f"start: {done.stderr.strip() or done.stdout.strip()}")

    def drain(self, timeout: float = 60) -> None:
        """Cancel this cluster's jobs and wait until none is left, not even completing: a job
        step whose slurmd is gone would wait for it for ever."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True,
                                   text=True, env=self.env, timeout=30)
            jobs = queue.stdout.split()
            if queue.returncode != 0 or not jobs:
                return
            subprocess.run(["scancel", *jobs], capture_output=True, env=self.env, timeout=30)
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their pid files), newest first, once its
        jobs are gone."""
        if self.pid_files["slurmctld"].is_file():
            self.drain()
        for name in ("slurmd", "slurmctld", "munged"):
            path = self.pid_files[name]
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.munge_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node Slurm; ``SLURM_CONF`` points at it while the session runs."""
    reason = missing_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no local Slurm can start: {reason}")
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
