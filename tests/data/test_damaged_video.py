"""A video whose stream is damaged half-way: decoding stops before the frame count of its header, and both the
data stage and `ferseq predict` say so, with both counts."""

from __future__ import annotations

import shutil

import pytest

from conftest import CLASSES, DEMO, SCHEMAS
from ferseq.data import videos
from ferseq.data.annotations import AnnotationError, load_segments


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """man_neutral_to_happy.mp4 (72 frames) with 4 kB of its stream overwritten half-way: OpenCV decodes 32."""
    folder = tmp_path_factory.mktemp("damaged")
    data = bytearray((DEMO / "videos/man_neutral_to_happy.mp4").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    (folder / "man.mp4").write_bytes(bytes(data))
    shutil.copy(DEMO / "videos/woman_sad_to_happy.mp4", folder / "woman.mp4")
    return folder


def test_the_probe_and_the_data_stage_name_both_counts(damaged, tmp_path):
    info = videos.probe(damaged / "man.mp4")
    assert (info.frames, info.header_frames, info.cut_short) == (32, 72, True)
    assert not videos.probe(damaged / "woman.mp4").cut_short
    table = tmp_path / "annotations.csv"
    table.write_text("video,subject,label,start_frame,end_frame\nman.mp4,m,happy,0,72\nwoman.mp4,w,sad,0,40\n")
    with pytest.raises(AnnotationError) as err:
        load_segments(table, damaged, CLASSES, SCHEMAS / "annotations.schema.yaml")
    assert ("row 1, column end_frame: end_frame 72 is past the end of man.mp4 (32 frames decoded, its header gives "
            "72: decoding stopped early, the file looks damaged (or its header is wrong))") in str(err.value)
    assert "row 2" not in str(err.value)


def test_predict_marks_a_video_cut_short_in_its_summary_and_exit_status(damaged, demo_run, tmp_path, capsys):
    import logging

    import pandas as pd

    from ferseq import cli

    try:
        status = cli.main(["predict", str(damaged / "man.mp4"), "--run", str(demo_run / "results"), "-o",
                           str(tmp_path), "--workers", "0"])
    finally:  # cli.main routed the ferseq loggers to stderr only
        logging.getLogger("ferseq").handlers.clear()
        logging.getLogger("ferseq").propagate = True
    stderr = capsys.readouterr().err
    assert status == 1, stderr[-3000:]
    assert ("CUT SHORT man: 32 frames" in stderr and "decoding stopped after 32 of the 72 frames its header "
            "gives: the file looks damaged (or its header is wrong); its outputs cover the 32 decoded frames") in stderr
    assert len(pd.read_parquet(tmp_path / "man.parquet")) == 32
