"""Speed of the pretraining: its faces job on a static image set, and its training loop against a bare train step.

    python benchmarks/pretrain.py [--images 500] [--backbone legacy_xception] [--size 96] [--batch 32]
                                  [--batches N] [--workers 2] [--face-workers 2] [--decode auto] [--repeat 3]

First an image set in the folder form (``<root>/<class>/<image>.jpg``): ``--images`` face crops of the demo clips
(the faces stage run on the woman clip, then on the other demo clips while more are needed; cycled if the clips
have fewer faces), each written as its JPEG file (224 px aligned crops), given one of four classes in turn.

- faces: :func:`ferseq.pretrain.image_sets.read_image_set` (``folder``) and
  :func:`ferseq.pretrain.image_faces.extract_image_faces` with ``detector: none`` (the whole image is the face
  box: dlib's 68 landmarks in it, alignment, JPEG, the faces file and the label table), in ``--face-workers``
  forked processes (chunks of the job's 1,000 images, smaller when that leaves a worker without a chunk): the
  work of the ``pretrain_faces`` job, models loaded included; images per second.

Then the pretraining's train crops, made as :func:`ferseq.pretrain.training.pretrain` makes them (its
:func:`~ferseq.pretrain.training.class_map`, :func:`~ferseq.pretrain.training.hold_out` with the default
``val_fraction`` 0.1, :func:`~ferseq.pretrain.training.examples`: crops streamed from the faces file just written),
the settings of :func:`~ferseq.pretrain.training.pretrain_settings` (``--batch`` given as ``pretrain.batch_size``)
and its network (:func:`ferseq.frame_model.network.build_model`, section ``pretrain``, random weights); with the
same model, batch size and input size:

- loop: one epoch of the pipeline's training loop (:func:`ferseq.frame_model.training.train_epoch`) over
  :func:`ferseq.frame_model.training.frame_batches` of the train crops (shuffled and augmented; decoded by OpenCV
  in ``--workers`` DataLoader workers on the CPU, on CUDA in batches by nvJPEG, ``--decode`` overrides): the
  whole batches of the train split (the pipeline's epoch, less a last partial batch), or its first ``--batches``
  batches (images in image_id order, so of the first classes only: speed does not depend on the labels);
  the class weights of the whole train split, weighted cross entropy, Adam, the model placed as the pipeline
  places it (channels_last);
- bare: as many train steps (:func:`ferseq.frame_model.training.train_step`) of the same model on the same crops,
  decoded beforehand and already on the device as uint8 batches (pure model time, an upper bound), in both
  memory layouts: default and channels_last.

This is ``benchmarks/frame_model.py``'s measurement (its ``loop_fps`` and ``bare_fps``) on the pretraining's
crops and settings. Each figure is the median of ``--repeat`` runs (loop and bare interleaved; the faces job run
``--repeat`` times before) after one warm-up epoch; the last line is the median of the per-run ratios loop / bare
frames per second, against the faster of the two bare layouts (channels_last on a GPU), and the target.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from features import DEFAULT_VIDEO, make_faces  # noqa: E402  (benchmarks/features.py)
from frame_model import loop_against_bare  # noqa: E402  (benchmarks/frame_model.py)
from ferseq.faces.face_extraction import NoFaceError  # noqa: E402
from ferseq.frame_model import crops  # noqa: E402
from ferseq.frame_model.device_crops import decode_on_device  # noqa: E402
from ferseq.frame_model.network import build_model, default_device, to_device  # noqa: E402
from ferseq.frame_model.training import class_weights, frame_batches  # noqa: E402
from ferseq.pretrain.image_faces import extract_image_faces  # noqa: E402
from ferseq.pretrain.image_sets import read_image_set  # noqa: E402
from ferseq.pretrain.training import class_map, examples, hold_out, pretrain_settings  # noqa: E402

VIDEOS = REPO / "data" / "demo" / "videos"
LABELS = ["neutral", "happiness", "sadness", "surprise"]  # the image set's class folders
JOB_CHUNK = 1000  # extract_image_faces' chunk, as the pretrain_faces job runs it
SEED = 42  # the config's default seed
TARGET = 0.8


def demo_crops(n: int, folder: Path) -> list[bytes]:
    """``n`` face crops (JPEG bytes) of the demo clips: the woman clip's first, then the others'; cycled if fewer."""
    import cv2

    found: list[bytes] = []
    videos = [DEFAULT_VIDEO, *sorted(p for p in VIDEOS.iterdir() if p != DEFAULT_VIDEO)]
    for i, video in enumerate(videos):
        if len(found) >= n:
            break
        capture = cv2.VideoCapture(str(video))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        (folder / str(i)).mkdir()
        try:
            rows = pd.read_parquet(make_faces(video, min(frames, n - len(found)), folder / str(i)),
                                   columns=["face_found", "crop"])
        except NoFaceError:  # a clip whose first frames show no face (a title card): the next clip
            continue
        found += rows.loc[rows["face_found"], "crop"].tolist()
    if not found:
        raise SystemExit("no face found in the demo clips")
    return [found[i % len(found)] for i in range(n)]


def write_image_set(images: list[bytes], root: Path) -> None:
    """``images`` as JPEG files in class folders (``root/<class>/<index>.jpg``), the classes in turn."""
    for i, data in enumerate(images):
        folder = root / LABELS[i % len(LABELS)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(data)


def faces_job(root: Path, folder: Path, workers: int, chunk: int) -> tuple[float, pd.DataFrame]:
    """Seconds of the pretrain_faces job's work on the image set ``root`` (read it, find, align and write its
    faces, ``detector: none``), and its label table."""
    started = time.perf_counter()
    image_set = read_image_set("folder", root)
    table = extract_image_faces(image_set, {"detector": "none"}, folder / "faces.parquet", folder / "images.parquet",
                                workers=workers, chunk=chunk)
    return time.perf_counter() - started, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images of the set (face crops of the demo clips)")
    parser.add_argument("--backbone", default="legacy_xception")
    parser.add_argument("--size", type=int, default=96, help="input size (the demo config's; reference 224)")
    parser.add_argument("--batch", type=int, default=32, help="pretrain.batch_size")
    parser.add_argument("--batches", type=int, default=None,
                        help="train steps per measured epoch (default: all whole batches of the train split)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loop (CPU decoding)")
    parser.add_argument("--face-workers", type=int, default=2, help="processes of the faces job (pretrain.threads)")
    parser.add_argument("--decode", choices=["auto", "device", "workers"], default="auto",
                        help="where the loop decodes crops (auto: the device on CUDA, workers on the CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    dev = default_device()
    decode = None if args.decode == "auto" else args.decode
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name)
    (folder / "clips").mkdir()
    root = folder / "images"
    write_image_set(demo_crops(args.images, folder / "clips"), root)

    # the pretrain_faces job
    chunk = min(JOB_CHUNK, math.ceil(args.images / args.face_workers))
    faces_runs = []
    for _ in range(args.repeat):
        seconds, table = faces_job(root, folder, args.face_workers, chunk)
        faces_runs.append(args.images / seconds)
    faces_path = folder / "faces.parquet"

    # the pretraining's train crops and settings, as pretrain() makes them
    config = {"seed": SEED,
              "frame_model": {"backbone": args.backbone, "input_size": args.size, "num_workers": args.workers,
                              "augment": True, "init": "none"},
              "pretrain": {"init": "none", "batch_size": args.batch}}
    cfg = pretrain_settings(config)
    classes, mapping = class_map(config, table["label"].astype(str).tolist())
    data, _ = examples(faces_path, hold_out(table, 0.1, SEED), classes, mapping)
    train_crops, train_y = data["train"]
    batch = int(cfg["batch_size"])
    steps = len(train_y) // batch if args.batches is None else min(args.batches, len(train_y) // batch)
    if steps < 1:
        raise SystemExit(f"{len(train_y)} train crops: not one batch of {batch}; raise --images")
    n = steps * batch
    labels = train_y[:n]  # the first n crops of the train split (frame_batches indexes the source from 0)
    # the class weights of the whole train split, as fit() computes them (a prefix may lack classes)
    weights = class_weights(np.bincount(train_y, minlength=len(classes)), classes).to(dev)
    batches = frame_batches(train_crops, labels, cfg, dev, torch.Generator().manual_seed(SEED),
                            decode_on_device(decode, dev))

    torch.manual_seed(SEED)
    model = to_device(build_model(config, None, section="pretrain", classes=classes), dev)
    # the same crops, decoded beforehand: every unit of the train crops read, the first n kept
    encoded = []
    for unit in range(len(train_crops.starts) - 1):
        _, flat, offsets = train_crops.read(unit)
        encoded += [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    images = [crops.to_tensor(crops.decode(c, args.size)) for c in encoded[:n]]
    loop, bare_runs, fastest, ratio = loop_against_bare(model, batches, images, labels, batch, float(cfg["lr"]),
                                                        weights, dev, args.repeat)

    def runs(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} (runs: {', '.join(f'{x:.1f}' for x in values)})"

    print(f"device {dev.type} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), torch threads "
          f"{torch.get_num_threads()}, backbone {args.backbone}, size {args.size}, batch {batch}, {steps} steps a "
          f"run, {args.workers} workers, loop layout {model.memory_format}, decode {args.decode}")
    print(f"image set: {args.images} JPEG face crops of the demo clips in {len(LABELS)} class folders; faces found in "
          f"{int(table['face_found'].sum())}; train {len(train_y)}, val {len(data['val'][1])} crops")
    print(f"pretrain faces (detector none, {args.face_workers} workers, chunks of {chunk}): "
          f"{runs(faces_runs)} images/s")
    for layout, values in bare_runs.items():
        faster = " (the faster)" if layout == fastest else ""
        print(f"bare train step, {layout + ':':14} {runs(values)} frames/s{faster}")
    print(f"pretraining loop:                {runs(loop)} frames/s")
    print(f"loop / bare: {ratio:.2f} (target >= {TARGET})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
