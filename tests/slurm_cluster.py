"""A throwaway one-node SLURM cluster on localhost, for the `slurm`-marked tests.

Debian's slurm-wlm (22.05) and munge run as root with every file in a temp dir:
munged on its own socket and key, slurmctld and slurmd in the foreground (so we hold
their pids), no accounting, fake GPUs as gres on /dev/null-like device files. The client commands
(sbatch, srun, ...) are kept OFF the system PATH in `SLURM_BIN`: submitit picks SLURM
whenever it sees `srun`, so only the cluster's `env` (given to the processes under
test) can see them.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

SLURM_BIN = Path("/opt/kd-test-slurm/bin")  # where the client commands live, off PATH
APT_PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"]
NODE = socket.gethostname()  # SLURM's node name is rank 0's address for torch.distributed: one that resolves
# Declared, not real (SlurmdParameters=config_overrides): room for 4 cells of kd's slurm preset as it
# ships (1 GPU, 4 CPUs, 16 GB each), which then share this machine's real cores and memory.
NODE_CPUS = 16
NODE_GPUS = 4  # fake: /dev/null-like device files, so SLURM hands out CUDA_VISIBLE_DEVICES=0..3
NODE_MEMORY_MB = 65536


def unavailable_reason() -> Optional[str]:
    """Why the SLURM tests cannot run here, or None when they can."""
    if os.environ.get("KD_TEST_SLURM") != "1":
        return "needs a real SLURM: set KD_TEST_SLURM=1 (as root; .ci/run does) to install slurm-wlm + munge via apt and run it"
    if os.geteuid() != 0:
        return "needs root to install and run slurmctld/slurmd/munged"
    if shutil.which("apt-get") is None and not all(Path(d).exists() for d in DAEMONS):
        return "slurm-wlm is not installed and apt-get is not available to install it"
    return None


def ensure_installed() -> None:
    """Install slurm-wlm + munge if missing, then move the client commands off PATH."""
    clients = (SLURM_BIN / "sbatch").exists() or shutil.which("sbatch") is not None
    if not clients or not all(Path(d).exists() for d in DAEMONS):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with services_not_started():
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True, timeout=600)
            # --reinstall: also brings back commands that are gone from both /usr/bin and SLURM_BIN
            subprocess.run(["apt-get", "install", "-y", "-q", "--reinstall", "--no-install-recommends",
                            *APT_PACKAGES], env=env, check=True, capture_output=True, timeout=900)
    hide_client_commands()


@contextmanager
def services_not_started() -> Iterator[None]:
    """Keep apt from starting the system's munge/slurm services (Docker images ship this policy already)."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")  # 101: action forbidden by policy
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink()


def hide_client_commands() -> None:
    """Move every slurm-client command from /usr/bin into SLURM_BIN (a reinstall puts them back; we move again)."""
    listed = subprocess.run(["dpkg", "-L", "slurm-client"], capture_output=True, text=True, check=True).stdout
    SLURM_BIN.mkdir(parents=True, exist_ok=True)
    for line in listed.split():
        path = Path(line)
        if path.parent == Path("/usr/bin") and path.is_file():
            shutil.move(str(path), SLURM_BIN / path.name)
    assert shutil.which("srun") is None, f"srun is still on PATH at {shutil.which('srun')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path) -> Path:
    """slurm.conf + gres.conf for one node with NODE_CPUS cpus and NODE_GPUS fake GPUs; returns slurm.conf."""
    for sub in ("state", "spool", "log", "gpus"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    gpu_files = []
    for i in range(NODE_GPUS):
        # slurmd wants a character device per GPU: a /dev/null twin (major 1, minor 3) stands in for /dev/nvidia<i>
        path = root / "gpus" / f"nvidia{i}"
        if not path.exists():
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        gpu_files.append(str(path))
    (root / "gres.conf").write_text(
        "".join(f"NodeName={NODE} Name=gpu File={f}\n" for f in gpu_files)
    )
    node = (f"NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
            f"RealMemory={NODE_MEMORY_MB} Gres=gpu:{NODE_GPUS} State=UNKNOWN")
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=kdtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge.socket'}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
KillWait=5
DefMemPerCPU=1000
MinJobAge=600
{node}
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


class LocalSlurm:
    """The running cluster: `env` is what a process needs to use it (PATH + SLURM_CONF)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = write_config(root)
        self.daemons: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The current environment plus this cluster's commands and config; jobs inherit it (sbatch --export=ALL)."""
        return {**os.environ, "PATH": f"{SLURM_BIN}{os.pathsep}{os.environ['PATH']}", "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, timeout: float = 60) -> str:
        """Run a SLURM client command (e.g. `squeue`) against this cluster and return its stdout."""
        out = subprocess.run([str(SLURM_BIN / args[0]), *args[1:]], env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.daemons.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True))
        log.close()

    def start(self, timeout: float = 60) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self._spawn("munged", ["/usr/sbin/munged", "--foreground", "--force", f"--socket={self.root / 'munge.socket'}",
                               f"--key-file={key}", f"--pid-file={self.root / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munged.seed'}"])
        self._wait(lambda: (self.root / "munge.socket").exists(), timeout, "munged socket")
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, f"node {NODE} to be idle")

    def _node_idle(self) -> bool:
        try:
            return "idle" in self.command("sinfo", "-h", "-N", "-o", "%T", timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: gave up waiting for {what} (exited: {dead}); "
                                   f"logs in {self.root / 'log'}:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*")))

    def stop(self) -> None:
        """Cancel all jobs, then stop the daemons by pid (TERM, then KILL); never by name."""
        if len(self.daemons) == len(DAEMONS) and all(p.poll() is None for p in self.daemons):
            try:
                self.command("scancel", "--full", "--user=root", timeout=20)
                time.sleep(1)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        for proc in reversed(self.daemons):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        self.daemons = []
        for pid in self.job_processes():  # a job step (or a test's sweep) that outlived the daemons
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def job_processes(self) -> list[int]:
        """Pids of live processes started for this cluster's jobs (their environment names its slurm.conf)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
        return found


@contextmanager
def local_slurm(root: Path) -> Iterator[LocalSlurm]:
    """Install if needed, start the cluster under `root`, and always stop it."""
    ensure_installed()
    cluster = LocalSlurm(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
