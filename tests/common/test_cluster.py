"""ferseq.common.cluster: a SLURM job no node of its partition can hold is named before anything is submitted.
(The check inside a real run, on a real SLURM, is in tests/workflow/test_slurm.py.)"""

from __future__ import annotations

import pytest

from ferseq.common.cluster import ClusterError, Node, Request, check, cluster_nodes, misfits, parse_sinfo

# `sinfo -h -N -o '%P|%c|%m'` on a cluster with a default CPU partition of small and big nodes and a GPU partition.
SINFO = """\
cpu*|2|23081
cpu*|8|64000
gpu|16|128000
"""


def test_parse_sinfo_reads_partition_cpus_memory_and_the_default():
    assert parse_sinfo(SINFO) == [Node("cpu", 2, 23081, True), Node("cpu", 8, 64000, True),
                                  Node("gpu", 16, 128000, False)]


def test_a_group_larger_than_every_node_is_named_with_the_packing_that_fits():
    nodes = parse_sinfo("cpu*|2|23081\n")
    group = Request("group job sequence_grid_0 (3 jobs of sequence_model)", cpus=3, mem_mb=6000, partition="cpu",
                    jobs=3, job_cpus=1, job_mem_mb=2000, setting="sequence_grid_{fold}")
    with pytest.raises(ClusterError) as err:
        check([group], nodes)
    message = str(err.value)
    assert "group job sequence_grid_0 (3 jobs of sequence_model) asks for 3 CPUs and 6000 MB" in message
    assert "the largest node of partition cpu has 2 CPUs and 23081 MB" in message
    assert "--group-components sequence_grid_{fold}=2" in message


def test_jobs_that_fit_pass_and_the_largest_node_of_the_partition_counts():
    nodes = parse_sinfo(SINFO)
    fitting = [Request("rule faces", cpus=8, mem_mb=60000, partition=None),  # the default partition's big node
               Request("rule frame_model (fold=0)", cpus=16, mem_mb=None, partition="gpu"),
               Request("rule x", cpus=16, mem_mb=1000, partition="cpu,gpu"),  # either partition will do
               Request("rule y", cpus=64, mem_mb=1000, partition="elsewhere")]  # unknown here: sbatch says so
    assert misfits(fitting, nodes) == []
    check(fitting, nodes)
    check([Request("rule z", cpus=999, mem_mb=None, partition=None)], None)  # no sinfo: nothing to check


def test_a_single_job_too_big_by_memory_says_what_to_lower():
    problems = misfits([Request("rule frame_model (fold=0)", cpus=2, mem_mb=200000, partition="gpu",
                                setting="frame_model")], parse_sinfo(SINFO))
    assert problems == ["rule frame_model (fold=0) asks for 2 CPUs and 200000 MB, but the largest node of partition "
                        "gpu has 16 CPUs and 128000 MB: lower its threads or memory (--set-threads frame_model=16, "
                        "--set-resources frame_model:mem_mb=...) or give it another partition "
                        "(--set-resources frame_model:slurm_partition=...)"]


def test_a_group_too_big_by_memory_packs_what_the_memory_allows():
    group = Request("group job g", cpus=4, mem_mb=40000, partition="cpu", jobs=4, job_cpus=1, job_mem_mb=10000,
                    setting="g_{fold}")
    (problem,) = misfits([group], [Node("cpu", 8, 23081)])
    assert problem.endswith("it packs 4 jobs; pack at most 2 (--group-components g_{fold}=2, "
                            "or group-components in the profile)")


def test_without_sinfo_there_is_nothing_to_ask():
    assert cluster_nodes("ferseq-no-such-sinfo") is None
