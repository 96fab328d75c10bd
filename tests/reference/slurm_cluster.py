"""A throw-away single-node SLURM for the tests: munged, slurmctld and slurmd of Debian's
``slurm-wlm`` and ``munge`` packages, started as child processes with their own key, socket,
ports, state and log directories (nothing under /etc or /run is used or changed).

The node runs without cgroups (``proctrack/linuxproc``, ``task/none``, no accounting), so it
needs no systemd and no writable cgroup hierarchy; slurmd still has to run as root.

    reason = why_not()            # None, or why this machine cannot run it
    with running_slurm(root) as slurm:
        subprocess.run(["sbatch", ...], env=slurm.env)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = {"munged": "munge", "slurmctld": "slurm-wlm", "slurmd": "slurm-wlm"}
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "munge")
PARTITION = "debug"
DOWN = "down"  # a partition that accepts jobs and never starts them


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(d) / name) for d in ("/usr/sbin", "/sbin") if (Path(d) / name).is_file()), None)


def why_not() -> str | None:
    """None when this machine can run the test cluster, else the reason (for pytest.skip)."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a local SLURM needs root: slurmd starts the jobs as their users"
    missing = [f"{name} ({pkg})" for name, pkg in DAEMONS.items() if _find(name) is None]
    missing += [name for name in CLIENTS if _find(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (`make system-packages` installs slurm-wlm and munge)"
    return None


@dataclass
class Slurm:
    root: Path
    conf: Path
    node: str
    partition: str = PARTITION
    env: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)  # name -> Popen

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60,
                              check=check)

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job the controller still lists."""
        out = self.run("squeue", "-h", "-o", "%i %T", check=False).stdout
        return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.8)
    return 1024


def write_config(root: Path, node: str) -> Path:
    """Key, directories and slurm.conf under ``root``; returns the slurm.conf path."""
    for d in ("munge", "run", "state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # munged checks permissions: the key private, every directory above the socket searchable
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o700)
    os.chmod(root / "run", 0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    ctld_port, slurmd_port = _free_ports(2)
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=lotftest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName={DOWN} Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN
""")
    return conf


def _stop(proc: subprocess.Popen, wait: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def running_slurm(root: Path, timeout: float = 60.0) -> Iterator[Slurm]:
    """munged, slurmctld and slurmd under ``root``; yields once ``sinfo`` shows the node idle.
    Afterwards every job still listed is cancelled and the three daemons are stopped by their
    own process ids (SIGTERM, then SIGKILL after 15 s)."""
    root = Path(root)
    node = socket.gethostname().split(".")[0]
    conf = write_config(root, node)
    env = dict(os.environ, SLURM_CONF=str(conf))
    slurm = Slurm(root=root, conf=conf, node=node, env=env)
    log = root / "log"

    def start(name: str, *args: str) -> None:
        out = open(log / f"{name}.out", "w")
        slurm.procs[name] = subprocess.Popen([_find(name), *args], env=env, stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()

    try:
        start("munged", "-F", f"--socket={root}/run/munge.socket",
              f"--key-file={root}/munge/munge.key", f"--log-file={log}/munged.log",
              f"--pid-file={root}/run/munged.pid", f"--seed-file={root}/munge/munged.seed",
              "--num-threads=2")
        _until(lambda: (root / "run" / "munge.socket").exists(), timeout, slurm, "munged socket")
        start("slurmctld", "-D", "-i", "-f", str(conf))
        _until(lambda: slurm.run("sinfo", "-h", check=False).returncode == 0, timeout, slurm,
               "slurmctld answering")
        start("slurmd", "-D", "-f", str(conf), "-N", node)
        # one line per partition the node is in
        _until(lambda: set(slurm.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()) == {"idle"},
               timeout, slurm, f"node {node} idle in sinfo")
        yield slurm
    finally:
        if "slurmctld" in slurm.procs and slurm.procs["slurmctld"].poll() is None:
            slurm.run("scancel", "--full", "--user", str(os.getuid()), check=False)
            deadline = time.time() + 20
            while slurm.jobs() and time.time() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in slurm.procs:
                _stop(slurm.procs[name])


def _until(ok, timeout: float, slurm: Slurm, what: str) -> None:
    deadline = time.time() + timeout
    while True:
        dead = [n for n, p in slurm.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{slurm.logs()}")
        if ok():
            return
        if time.time() > deadline:
            raise RuntimeError(f"no {what} after {timeout:g} s:\n{slurm.logs()}")
        time.sleep(0.2)
