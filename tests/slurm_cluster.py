"""A private single-node SLURM cluster in one folder, for trying the SLURM profile on one machine.

Usage (as root, with Debian's slurmctld, slurmd, slurm-client and munge installed)::

    python tests/slurm_cluster.py up /tmp/ferseq-slurm     # prints the export line to paste: SLURM_CONF, PATH
    python tests/slurm_cluster.py down /tmp/ferseq-slurm

Everything lives in the folder: its own ``slurm.conf`` and ``gres.conf``, state and spool
folders, a fresh munge key and munge socket, free TCP ports and the daemons' pid files, so a
system SLURM or munge on the same machine is never touched. The one node is this machine as
``slurmd -C`` sees it (CPUs, memory), in two partitions, ``cpu`` (the default) and ``gpu``,
with one GPU declared as a GRES on a stand-in device file. There is no accounting database
(as on many small clusters): finished jobs stay visible to ``squeue``/``scontrol`` for
``MinJobAge`` seconds and are written to ``jobcomp.txt`` (``JobCompType=jobcomp/filetxt``).
The tests use it through ``start``/``stop`` (tests/workflow/test_slurm.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

COMMANDS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
# Jobs stay in slurmctld's memory this long after they end: what `squeue --states=all` and
# `scontrol show job` answer from without accounting (the SLURM executor polls with squeue).
MIN_JOB_AGE = 3600


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says why and ends with the daemon's log."""


@dataclass(frozen=True)
class Cluster:
    """A running private cluster: its folder, node, and the environment its clients need."""

    folder: Path
    node: str
    cpus: int
    memory_mb: int

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point SLURM's commands (and jobs, which inherit them) at this cluster."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    @property
    def jobcomp(self) -> Path:
        """One line per finished job, written by slurmctld (``JobCompType=jobcomp/filetxt``)."""
        return self.folder / "jobcomp.txt"


def _which(command: str) -> str | None:
    """A program on PATH, or in the sbin folders where Debian puts the daemons (a user's PATH may lack them)."""
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def missing_commands() -> list[str]:
    """The SLURM and munge programs this machine lacks (empty when a cluster can start)."""
    return [c for c in COMMANDS if _which(c) is None]


def node_hardware() -> dict[str, str]:
    """This machine as ``slurmd -C`` reports it: NodeName, CPUs, ..., RealMemory."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return dict(item.split("=", 1) for item in first.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stand_in_device(path: Path) -> None:
    """A device file for the GPU GRES: a character device with NVIDIA's major number where mknod is
    allowed (slurmd then sets CUDA_VISIBLE_DEVICES as on a GPU node; nothing ever opens it), else a
    plain file (slurmd logs that it is not a device but still counts and allocates the GPU)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(195, 0))
    except OSError:
        path.touch(mode=0o600)


def _write_config(folder: Path, hardware: dict[str, str]) -> int:
    """Write slurm.conf and gres.conf; returns the node memory declared (MB)."""
    node = hardware["NodeName"]
    # Keep a little memory back for the daemons and the submitting Snakemake.
    memory = max(1024, int(hardware["RealMemory"]) - 1024)
    shape = " ".join(f"{k}={hardware[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                       "ThreadsPerCore") if k in hardware)
    user = os.environ.get("USER") or "root"
    if os.geteuid() == 0:
        user = "root"
    gpu = folder / "dev" / "nvidia0"
    gpu.parent.mkdir(exist_ok=True)
    _stand_in_device(gpu)
    (folder / "gres.conf").write_text(f"AutoDetect=off\nNodeName={node} Name=gpu File={gpu}\n")
    (folder / "slurm.conf").write_text(f"""\
# Private single-node cluster of tests/slurm_cluster.py: nothing here is shared with a system SLURM.
ClusterName=ferseq
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / 'munge' / 'munge.socket'}
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: works in containers; memory is still a consumable the scheduler enforces at submission.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# No accounting database: finished jobs are answered from slurmctld's memory and the jobcomp file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder / 'jobcomp.txt'}
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
KillWait=5
MailProg=/bin/true
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 {shape} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
""")
    return memory


def _write_srun(folder: Path) -> None:
    """``bin/srun``: the real srun, told where this cluster's slurm.conf is.

    Inside a job the SLURM executor runs the rule through ``srun``, after dropping every
    ``SLURM_*`` variable but the job's id (snakemake-executor-plugin-slurm-jobstep), so
    SLURM_CONF does not reach it; on a real cluster srun finds slurm.conf at its standard
    place (or through slurmd, configless), which this private cluster must not touch.
    """
    shim = folder / "bin" / "srun"
    elsewhere = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != shim.parent]
    srun = shutil.which("srun", path=os.pathsep.join(elsewhere)) or "/usr/bin/srun"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nSLURM_CONF="{folder / "slurm.conf"}" exec "{srun}" "$@"\n')
    shim.chmod(0o755)


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return f"({path.name} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start(command: list[str], env: dict[str, str], log: Path) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}\n{_log_tail(log)}")


def _wait(what: str, ready, log: Path, pidfile: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if (pid := _pid(pidfile)) is not None and not _alive(pid):
            raise ClusterError(f"{what} exited; {log.name}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not come up within {timeout:.0f} s; {log.name}:\n{_log_tail(log)}")
        time.sleep(0.3)


def _query(env: dict[str, str], *command: str) -> str:
    """A SLURM command's output, or "" when it fails (e.g. the controller is not up yet)."""
    try:
        done = subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def start(folder: Path) -> Cluster:
    """Write the cluster's files into ``folder`` and start munged, slurmctld and slurmd.

    Returns once the node is idle in both partitions. On failure everything started is
    stopped again and ``ClusterError`` names the daemon with its log.
    """
    if missing := missing_commands():
        raise ClusterError(f"not installed: {', '.join(missing)} (Debian: slurmctld slurmd slurm-client munge)")
    folder = Path(folder).resolve()
    stop(folder)  # a cluster already running from this folder would be orphaned by the new pid files
    folder.mkdir(parents=True, exist_ok=True)
    # munged and slurmd refuse group/world-writable folders.
    folder.chmod(0o700)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(mode=0o700, exist_ok=True)
    hardware = node_hardware()
    memory = _write_config(folder, hardware)
    _write_srun(folder)
    key = folder / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    cluster = Cluster(folder, hardware["NodeName"], int(hardware["CPUs"]), memory)
    try:
        munge = folder / "munge"
        _start([_which("munged"), f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}", "--force"], env, munge / "munged.log")
        _wait("munged", (munge / "munge.socket").exists, munge / "munged.log", munge / "munged.pid")
        # -c: a clean start, no state from an earlier run of this folder.
        _start([_which("slurmctld"), "-c", "-f", str(cluster.conf)], env, folder / "slurmctld.log")
        _wait("slurmctld", lambda: "UP" in _query(env, "scontrol", "ping"), folder / "slurmctld.log",
              folder / "slurmctld.pid")
        _start([_which("slurmd"), "-f", str(cluster.conf)], env, folder / "slurmd.log")
        _wait("slurmd", lambda: set(_query(env, "sinfo", "-h", "-o", "%t").split()) == {"idle"},
              folder / "slurmd.log", folder / "slurmd.pid")
    except BaseException:
        stop(folder)
        raise
    return cluster


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _ours(pidfile: Path, folder: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive and one of this folder's daemons (its command
    line names the folder): a stale pid file never leads to signalling some other process."""
    pid = _pid(pidfile)
    if pid is None or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return pid if str(folder) in cmdline else None


def stop(folder: Path) -> None:
    """Cancel the cluster's jobs and stop its daemons (by the pids in their pid files). Safe to repeat."""
    folder = Path(folder).resolve()
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    if _ours(folder / "slurmctld.pid", folder) and shutil.which("scancel"):
        # Running jobs end with slurmd (their slurmstepd would otherwise outlive it).
        jobs = _query(env, "squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i").split()
        if jobs:
            subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while _query(env, "squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i").split() \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
    for pidfile in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        if (pid := _ours(pidfile, folder)) is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("\n\n".join(__doc__.split("\n\n")[1:3]), file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "down":
        stop(folder)
        return 0
    try:
        cluster = start(folder)
    except ClusterError as err:
        print(f"slurm_cluster: {err}", file=sys.stderr)
        return 1
    print(f"# node {cluster.node}: {cluster.cpus} CPUs, {cluster.memory_mb} MB, partitions cpu and gpu (1 GPU)")
    print(f"export SLURM_CONF={cluster.conf} PATH={cluster.folder / 'bin'}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
