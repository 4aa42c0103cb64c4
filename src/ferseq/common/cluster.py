"""Does every SLURM job of a run fit on a node of its partition? Checked before anything is submitted.

SLURM accepts a job that asks for more CPUs than any node of its partition has and leaves it
pending forever (reason ``PartitionConfig``), and Snakemake then waits without a word. The
profile packs several sequence-grid jobs into one SLURM job, so on small nodes a group can be
such a job. :func:`check` refuses the run instead, naming the job or group, what it asks for and
the largest node, and saying which setting to change. Node sizes come from ``sinfo``; where
there is none (a dry run off the cluster) :func:`cluster_nodes` returns None and nothing is checked.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterable

from ferseq.common.errors import FerseqError


class ClusterError(FerseqError):
    """Some SLURM job of the run can never start on this cluster."""


@dataclass(frozen=True)
class Request:
    """One SLURM job as Snakemake will submit it: a rule's job, or a group of jobs packed together."""

    name: str                   # how the user knows it: "rule frame_model (fold=0)", "group sequence_grid_0"
    cpus: int                   # sbatch --cpus-per-task
    mem_mb: int | None          # sbatch --mem (None: not asked for)
    partition: str | None       # sbatch -p, possibly "a,b" (None: the cluster's default partition)
    jobs: int = 1               # Snakemake jobs inside (more than 1 for a group)
    job_cpus: int = 0           # CPUs of its largest job (a group)
    job_mem_mb: int = 0         # memory of its largest job (a group)
    setting: str | None = None  # what to change: a rule name, or a group's name as the rule writes it


@dataclass(frozen=True)
class Node:
    """A node as one partition offers it (``sinfo -N`` lists a node once per partition)."""

    partition: str
    cpus: int
    mem_mb: int
    default: bool = False       # the cluster's default partition (``*`` in sinfo)


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from ``sinfo -h -N -o '%P|%c|%m'`` lines (``cpu*|2|23081``: partition, CPUs, MB)."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        partition, cpus, memory = (field.strip() for field in line.split("|"))
        nodes.append(Node(partition.rstrip("*"), int(cpus.rstrip("+")), int(memory.rstrip("+")),
                          partition.endswith("*")))
    return nodes


def cluster_nodes(sinfo: str = "sinfo") -> list[Node] | None:
    """The nodes of the cluster this machine submits to, or None where ``sinfo`` is missing or fails."""
    if shutil.which(sinfo) is None:
        return None
    try:
        done = subprocess.run([sinfo, "-h", "-N", "-o", "%P|%c|%m"], capture_output=True, text=True, timeout=60)
        return parse_sinfo(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _largest(nodes: list[Node], partition: str | None) -> tuple[str, Node] | None:
    """The partition's name and its node with the most CPUs (then memory); None if it is not known here."""
    if partition is None:
        names = [n.partition for n in nodes if n.default][:1]
    else:
        names = [p.strip() for p in str(partition).split(",") if p.strip()]
    candidates = [n for n in nodes if n.partition in names]
    if not candidates:
        return None  # an unknown partition: sbatch itself says so at submission
    return ",".join(names), max(candidates, key=lambda n: (n.cpus, n.mem_mb))


def misfits(requests: Iterable[Request], nodes: list[Node]) -> list[str]:
    """One line per request that no node of its partition can hold, with the setting to change."""
    problems = []
    for request in requests:
        found = _largest(nodes, request.partition)
        if found is None:
            continue
        partition, node = found
        fits_mem = request.mem_mb is None or node.mem_mb >= request.mem_mb
        if node.cpus >= request.cpus and fits_mem:
            continue
        memory = f" and {request.mem_mb} MB" if request.mem_mb is not None else ""
        line = (f"{request.name} asks for {request.cpus} CPUs{memory}, but the largest node of partition "
                f"{partition} has {node.cpus} CPUs and {node.mem_mb} MB")
        if request.jobs > 1:
            per_job = min(node.cpus // max(request.job_cpus, 1),
                          node.mem_mb // request.job_mem_mb if request.job_mem_mb else request.jobs)
            line += (f": it packs {request.jobs} jobs; pack at most {max(per_job, 1)} "
                     f"(--group-components {request.setting}={max(per_job, 1)}, or group-components in the profile)")
        else:
            line += (f": lower its threads or memory (--set-threads {request.setting}={node.cpus}, "
                     f"--set-resources {request.setting}:mem_mb=...) or give it another partition "
                     f"(--set-resources {request.setting}:slurm_partition=...)")
        problems.append(line)
    return problems


def check(requests: Iterable[Request], nodes: list[Node] | None) -> None:
    """Raise :class:`ClusterError` listing every job that could never start; nothing to check without nodes."""
    if not nodes:
        return
    if problems := misfits(requests, nodes):
        raise ClusterError("SLURM would queue these jobs forever, so nothing was submitted:\n  "
                           + "\n  ".join(problems))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _request(job: Any, name: str, setting: str, members: list[Any]) -> Request:
    """A Request from a Snakemake job or group job, sized as snakemake-executor-plugin-slurm submits it."""
    resources = job.resources
    cpus = _int(resources.get("cpus_per_task")) or job.threads  # the plugin: cpus_per_task, else threads
    mem = _int(resources.get("mem_mb"))
    if _int(resources.get("mem_mb_per_cpu")):
        mem = resources.get("mem_mb_per_cpu") * cpus

    def job_cpus(j: Any) -> int:
        return _int(j.resources.get("cpus_per_task")) or j.threads

    return Request(name=name, cpus=max(cpus, 1), mem_mb=mem, partition=resources.get("slurm_partition"),
                   jobs=len(members), job_cpus=max(job_cpus(j) for j in members),
                   job_mem_mb=max(_int(j.resources.get("mem_mb")) or 0 for j in members), setting=setting)


def requests_from_dag(dag: Any, parent_groupids: dict[str, str]) -> list[Request]:
    """The SLURM jobs a Snakemake DAG will submit: each group job once, each other non-local job.

    ``dag`` is Snakemake's DAG (``workflow.dag`` in an ``onstart`` handler) and
    ``parent_groupids`` maps a group's resolved name to the name the rule writes
    (``workflow.parent_groupids``); this module itself never imports Snakemake.
    """
    requests, seen = [], set()
    for job in dag.needrun_jobs():
        if job.is_local:
            continue
        group = dag.get_job_group(job)
        if group is None:
            wildcards = ", ".join(f"{k}={v}" for k, v in (job.wildcards_dict or {}).items())
            name = f"rule {job.rule.name}" + (f" ({wildcards})" if wildcards else "")
            requests.append(_request(job, name, job.rule.name, [job]))
        elif id(group) not in seen:
            seen.add(id(group))
            members = list(group.jobs)
            rules = ", ".join(sorted({j.rule.name for j in members}))
            name = f"group job {group.groupid} ({len(members)} jobs of {rules})"
            requests.append(_request(group, name, parent_groupids.get(group.groupid, group.groupid), members))
    return requests
