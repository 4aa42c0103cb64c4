"""Feature store: a trained frame model over the real face crops of the demo clips.

Uses the faces files and config helpers of tests/demo_faces.py (built once per session).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import CLASSES, ferseq_log
from demo_faces import demo_faces, make_config
from ferseq.faces import landmark_features
from ferseq.features import feature_extraction
from ferseq.frame_model import crops, network, training
from ferseq.sequences import windows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_faces(tmp_path_factory.getbasetemp() / "demo_faces")


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> tuple[Path, dict]:
    """A fold-0 model (resnet18 at 32 px, one epoch) and its config, with two loader workers."""
    folder = tmp_path_factory.mktemp("model")
    config = make_config(folder, epochs=1, num_workers=2, inference_batch_size=8)
    training.train_frame_model(demo.faces, demo.segments, demo.splits, 0, config, folder / "model.pt",
                                  folder / "metrics.csv")
    return folder / "model.pt", config


def face_rows(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path, columns=["segment_id", "frame", "face_found", "landmarks", "crop"])
    return table[table["face_found"]].reset_index(drop=True)


def test_one_row_per_face_frame_with_the_schema(demo, trained, tmp_path):
    model_path, config = trained
    out = tmp_path / "man2.parquet"  # the video whose first segment starts on a title card (frames without a face)
    stats = feature_extraction.extract_features(model_path, demo.faces["man2"], demo.segments, out, config, fold=0)

    schema = pq.read_schema(out)
    assert schema.names == ["video_id", "frame", "segment_id", "label", "embedding", "probs", "landmarks"]
    assert schema.field("frame").type == pa.int32() and schema.field("segment_id").type == pa.int64()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 512)
    assert schema.field("probs").type == pa.list_(pa.float32(), len(CLASSES["names"]))
    assert schema.field("landmarks").type == pa.list_(pa.float32(), 136)

    table = pd.read_parquet(out)
    expected = face_rows(demo.faces["man2"])
    everything = pd.read_parquet(demo.faces["man2"], columns=["face_found"])
    assert len(table) == len(expected) == stats["frames"] < len(everything)
    assert (table["frame"].to_numpy() == expected["frame"].to_numpy()).all()  # order kept across row groups
    assert (table["video_id"] == "man2").all()
    labels = demo.table.set_index("segment_id")["label"]
    assert (table["label"].to_numpy() == labels[table["segment_id"]].to_numpy()).all()
    probs = np.stack(table["probs"].to_numpy())
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert stats["fold"] == 0 and stats["frames_per_second"] > 0
    note = feature_extraction.read_stats(out)
    assert note["classes"] == CLASSES["names"] and note["embedding_dim"] == 512 and note["frames"] == len(table)


def test_reloaded_model_gives_the_stored_embeddings(demo, trained, tmp_path):
    model_path, config = trained
    out = tmp_path / "woman.parquet"
    feature_extraction.extract_features(model_path, demo.faces["woman"], demo.segments, out, config, fold=0)
    stored, per_frame = windows.read_features(out)  # the reader of the next stage
    embeddings, probs = per_frame["embedding"], per_frame["probs"]

    model = network.load_frame_model(model_path, "cpu")
    rows = face_rows(demo.faces["woman"])
    images = torch.stack([crops.to_tensor(crops.decode(c, model.input_size)) for c in rows["crop"]])
    with torch.inference_mode():
        again, logits = model.embed(images)
    assert embeddings.shape == (len(rows), 512) and probs.shape == (len(rows), 4)
    assert np.allclose(embeddings, again.numpy(), atol=1e-5)
    assert np.allclose(probs, logits.softmax(dim=1).numpy(), atol=1e-5)
    assert (stored["frame"].to_numpy() == rows["frame"].to_numpy()).all()
    # The faces file's landmarks of the same frames, pose-normalised.
    raw = np.stack(rows["landmarks"].to_numpy()).astype(np.float32)
    assert np.allclose(per_frame["landmarks"], landmark_features.normalise(raw), atol=1e-6)


def test_decoding_on_the_device_gives_the_features_of_the_opencv_path(demo, tmp_path):
    """The GPU path (encoded crops, batched decode_jpeg + resize as tensor ops), here on the CPU device,
    against OpenCV in workers: 64 px crops to 48 px (INTER_AREA by 4/3), man2's faceless frames included."""
    torch.manual_seed(0)
    model = network.FrameModel("resnet18", CLASSES["names"], input_size=48).eval()
    labels = dict(zip(demo.table["segment_id"], demo.table["label"]))
    tables = {}
    for decode in ("workers", "device"):
        out = tmp_path / f"{decode}.parquet"
        stats = feature_extraction.extract_video(model, demo.faces["man2"], labels, out, video_id="man2", batch_size=8,
                                       num_workers=1, decode=decode)
        tables[decode] = pq.read_table(out)
        assert stats["frames"] == tables[decode].num_rows == len(face_rows(demo.faces["man2"]))
    opencv, device = tables["workers"], tables["device"]
    assert opencv.schema == device.schema
    for column in ("video_id", "frame", "segment_id", "label", "landmarks"):
        assert opencv[column].equals(device[column]), column
    for column in ("embedding", "probs"):
        a, b = (np.stack(t[column].to_numpy(zero_copy_only=False)) for t in (opencv, device))
        # Same pixels, so float32 rounding only; bf16 on a GPU allows 1/256 of the magnitude.
        assert np.abs(a - b).max() <= np.abs(a).max() / 256, column


def test_a_video_without_faces_gives_an_empty_file(demo, trained, tmp_path):
    model_path, config = trained
    faceless = tmp_path / "faceless.parquet"
    table = pq.read_table(demo.faces["man1"])
    table = table.set_column(table.schema.get_field_index("face_found"), "face_found", pa.array([False] * len(table)))
    pq.write_table(table, faceless)
    stats = feature_extraction.extract_features(model_path, faceless, demo.segments, tmp_path / "out.parquet", config, fold=0)
    assert stats["frames"] == 0
    empty = pq.read_table(tmp_path / "out.parquet")
    assert empty.num_rows == 0 and empty.schema.field("embedding").type == pa.list_(pa.float32(), 512)


def test_a_segment_the_data_stage_dropped_is_left_out(demo, trained, tmp_path):
    # With data.strict: false the faces stage also runs rows the data stage then drops (segment 7 here): their
    # frames are not features.
    model_path, config = trained
    segments = pd.read_parquet(demo.segments)
    segments[segments["segment_id"] != 7].to_parquet(tmp_path / "segments.parquet")
    feature_extraction.extract_features(model_path, demo.faces["man1"], tmp_path / "segments.parquet",
                                        tmp_path / "out.parquet", config, fold=0)
    written = pd.read_parquet(tmp_path / "out.parquet", columns=["segment_id"])
    faces = pd.read_parquet(demo.faces["man1"], columns=["segment_id", "face_found"])
    assert set(written["segment_id"]) == set(faces["segment_id"]) - {7}
    assert len(written) == int((faces["face_found"] & (faces["segment_id"] != 7)).sum())


def test_one_job_per_fold_writes_every_video_and_one_mlflow_run(demo, trained, tmp_path):
    model_path, config = trained
    config = {**config, "experiment": "features-test", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    # Video ids of imported datasets are paths below data.videos (RAVDESS: Actor_01/<clip>).
    faces = {f"Actor_01/{video_id}": path for video_id, path in demo.faces.items()}
    table = feature_extraction.extract_fold(model_path, faces, demo.segments, tmp_path / "features", config, fold=0)

    found = windows.feature_files(tmp_path / "features")
    assert found == sorted(tmp_path / "features" / f"{video_id}.parquet" for video_id in faces)
    # One model load for all videos gives what a single video's extraction gives.
    single = tmp_path / "man1.parquet"
    feature_extraction.extract_features(model_path, demo.faces["man1"], demo.segments, single, config, fold=0,
                              video_id="Actor_01/man1")
    assert pq.read_table(single).equals(pq.read_table(tmp_path / "features/Actor_01/man1.parquet"))
    (run,) = mlflow.search_runs(experiment_names=["features-test"], output_format="list")
    assert run.data.tags["stage"] == "features" and run.data.tags["fold"] == "0"
    frames = sum(len(face_rows(path)) for path in demo.faces.values())
    assert run.data.metrics["frames"] == frames == table["frames"].sum()
    assert run.data.metrics["videos"] == 3 and run.data.metrics["frames_per_second"] > 0
    assert list(pd.read_csv(tmp_path / "features" / "stats.csv")["video_id"]) == list(faces)
    assert "features_stats.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_a_fold_job_that_fails_keeps_its_finished_videos_for_the_next_attempt(demo, trained, tmp_path):
    model_path, config = trained
    config = {**config, "experiment": "features-partial", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    broken = tmp_path / "woman.parquet"
    broken.write_bytes(b"PAR1 not a parquet file")  # the last video's faces file is damaged
    faces = {"man1": demo.faces["man1"], "man2": demo.faces["man2"], "woman": broken}
    with pytest.raises(Exception):
        feature_extraction.extract_fold(model_path, faces, demo.segments, tmp_path / "features", config, fold=0)
    assert not (tmp_path / "features").exists()
    assert len(list((tmp_path / ".features.partial").glob("*.parquet"))) == 2

    with ferseq_log() as messages:
        feature_extraction.extract_fold(model_path, {**faces, "woman": demo.faces["woman"]}, demo.segments,
                              tmp_path / "features", config, fold=0)
    assert f"fold 0 features: 2 of 3 videos kept from an earlier attempt in {tmp_path / '.features.partial'}" in messages
    assert [m for m in messages if "videos done" in m] == ["fold 0 features: 3/3 videos done"]
    assert not (tmp_path / ".features.partial").exists()
    for video in ("man1", "woman"):  # a kept file and a new one: what an extraction in one go writes
        single = tmp_path / f"{video}.single.parquet"
        feature_extraction.extract_features(model_path, demo.faces[video], demo.segments, single, config, fold=0, video_id=video)
        assert pq.read_table(single).equals(pq.read_table(tmp_path / "features" / f"{video}.parquet"))
