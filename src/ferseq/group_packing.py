"""A fix for Snakemake's packing of group components (``--group-components``) when the DAG is built twice.

Snakemake 9 builds the DAG a second time when a checkpoint is incomplete at the
start (ferseq's ``faces_segments`` on every fresh run). Both passes recompute
the groups; the first pass packs ``--group-components G=3`` by merging group
jobs in place, but those group jobs are the ones Snakemake's group-job cache
hands out again on the second pass, each now holding three jobs. The second
pass merges those again: a fold's 9 grid jobs ended up in one group job of 9,
with others listed twice (24 job entries for 18 jobs in a dry run), instead of
the 3 SLURM jobs of 3 that the profile asks for.

:func:`apply` replaces ``DAG._update_group_components`` with the same
packing, except that a merged group job comes from the cache under its own
set of jobs instead of mutating a cached one, and that components are packed
in a fixed order (by their first output file) so every run packs alike. It
replaces only the version of the method it was written against (checked by
its source), so a Snakemake that changes the method keeps its own.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections import defaultdict

log = logging.getLogger(__name__)

# sha1 of the source of snakemake.dag.DAG._update_group_components as of Snakemake 9.27.1, the
# version this fix was written against.
KNOWN_SOURCE_SHA1 = "a5a8295715aee7742123c610220ddcb5ef4f1b05"


def _source_sha1(function) -> str:
    return hashlib.sha1(inspect.getsource(function).encode("utf-8")).hexdigest()


def _first_output(group) -> str:
    """A stable sort key of a group job: its smallest output path."""
    return min((str(f) for job in group.jobs for f in job.output), default="")


def _update_group_components(self) -> None:
    """Snakemake's ``DAG._update_group_components``, packing into fresh (cached) group jobs."""
    from snakemake.common import group_into_chunks

    groups_by_id = defaultdict(set)
    for group in self._group.values():
        groups_by_id[group.groupid].add(group)
    for groupid, conn_components in groups_by_id.items():
        lookup_id = self.workflow.parent_groupids.get(groupid, groupid)
        n_components = self.workflow.group_settings.group_components.get(lookup_id, 1)
        if n_components > 1:
            for chunk in group_into_chunks(n_components, sorted(conn_components, key=_first_output)):
                if len(chunk) > 1:
                    merged = self.group_job_factory.new(
                        groupid, (job for group in chunk for job in group.jobs), self.workflow.global_resources
                    )
                    for job in merged.jobs:
                        self._group[job] = merged

    for group in self._group.values():
        group.finalize()


def apply() -> bool:
    """Install the fix into Snakemake's DAG if it has the method it fixes; whether it did.

    Call it where Snakemake is imported already (a Snakefile): ``snakemake.dag`` alone is a circular import.
    """
    from snakemake.dag import DAG

    current = DAG._update_group_components
    if current is _update_group_components:
        return True
    try:
        known = _source_sha1(current) == KNOWN_SOURCE_SHA1
    except (OSError, TypeError):  # an installation without its .py sources: nothing to compare with
        known = False
    if not known:
        log.warning("ferseq.group_packing: this Snakemake's DAG._update_group_components is not the one the fix "
                    "was written against (9.27.1), so it is left as it is; if --group-components packs unevenly "
                    "(a dry run lists a group job with more jobs than the packing, or one several times), pass "
                    "--group-components sequence_grid_{fold}=1")
        return False
    DAG._update_group_components = _update_group_components
    return True
