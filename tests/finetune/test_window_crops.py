"""Windows of crops streamed from real faces files (the demo clips' faces, tests/demo_faces.py), without a whole-DAG
run: each window position gets its frame's crop (or the windows stage's stand-in for a faceless frame), every train
window once an epoch in a new order, and the worker and device paths give the same batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from demo_faces import demo_faces
from ferseq.finetune import window_crops
from ferseq.frame_model import crops
from ferseq.sequences import windows

CLASSES = ["neutral", "happy", "sad", "pensive"]
LENGTH = 4


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    """Windows of 4 frames over the demo's segments, two per segment, one of them over segment 11's faceless title
    frames (88-95); the faces files' crops of each position, as the windows stage picks them."""
    demo = demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")
    rows, frames, expected = [], [], []
    for video_id, path in demo.faces.items():
        faces = pq.read_table(path, columns=["segment_id", "frame", "face_found", "crop"]).to_pandas()
        found = faces[faces["face_found"] & faces["crop"].notna()]
        for segment in demo.table[demo.table["video_id"] == video_id].itertuples():
            mine = found[found["segment_id"] == segment.segment_id].sort_values("frame")
            for start in (segment.start, segment.end - LENGTH):
                wanted = np.arange(start, start + LENGTH)
                # the windows stage's stand-in: the last face frame before, else the first after
                picked = [mine[mine["frame"] <= f].iloc[-1] if (mine["frame"] <= f).any() else mine.iloc[0] for f in wanted]
                rows.append({"segment_id": segment.segment_id, "video_id": video_id, "subject": segment.subject,
                             "label": segment.label, "first_frame": start, "last_frame": start + LENGTH - 1})
                frames.append(wanted)
                expected.append([p["crop"] for p in picked])
    path = tmp_path_factory.mktemp("windows") / "train.parquet"
    table = pd.DataFrame(rows)
    windows.write(path, table, {"embedding": np.zeros((len(table), LENGTH, 2), np.float32),
                                windows.FRAMES: np.array(frames, np.int64)})
    return path, demo.faces, expected, table


def test_each_window_position_gets_its_frames_crop(split_file):
    path, faces, expected, table = split_file
    read = window_crops.read(path, faces, CLASSES)
    assert read.rows.shape == (len(table), LENGTH) and read.labels.tolist() == [CLASSES.index(x) for x in table["label"]]
    stream = crops.StreamBatches(read.source, read.rows, read.labels, 5)  # in order
    got = [bytes(b.data[b.offsets[i]:b.offsets[i + 1]]) for b in stream for i in range(len(b.offsets) - 1)]
    assert got == [crop for window in expected for crop in window]
    assert any(len(set(window)) < LENGTH for window in expected)  # segment 11's faceless frames took stand-ins


def test_train_windows_come_once_an_epoch_in_a_new_order_on_both_paths(split_file):
    path, faces, _, table = split_file
    read = window_crops.read(path, faces, CLASSES)
    cpu = torch.device("cpu")
    orders = []
    for seed in (1, 1, 2):
        workers = window_crops.batches(read, 32, 3, cpu, on_device=False, num_workers=1,
                                       generator=torch.Generator().manual_seed(seed), buffer=8)
        device = window_crops.batches(read, 32, 3, cpu, on_device=True, generator=torch.Generator().manual_seed(seed),
                                      buffer=8)
        epochs = []
        for _ in range(2):
            images = []
            for (a, ya), (b, yb) in zip(workers, device):
                assert a.shape == b.shape == (len(ya), LENGTH, 3, 32, 32) and torch.equal(ya, yb)
                assert (a.int() - b.int()).abs().max() <= 1  # OpenCV and libjpeg-turbo + matrix resize
                images.append(a)
            epochs.append(torch.cat(images).flatten(1))
        # every window once an epoch (found by its pixels among the windows in order), in a new order
        in_order = torch.cat([a for a, _ in window_crops.batches(read, 32, 3, cpu, on_device=False)]).flatten(1)
        positions = [[int(torch.nonzero((in_order == w).all(dim=1))[0]) for w in epoch] for epoch in epochs]
        assert all(sorted(p) == list(range(len(table))) for p in positions) and positions[0] != positions[1]
        orders.append(positions)
    assert orders[0] == orders[1] and orders[0] != orders[2]
