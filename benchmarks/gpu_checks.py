"""Checks of the CUDA paths against the CPU paths, for the GPU machine (no snakemake, mlflow or dlib there).

    PYTHONPATH=src python benchmarks/gpu_checks.py FACES_PARQUET [--device cuda]

FACES_PARQUET is a faces file made on the CPU machine (e.g. ``make demo``'s
``results/faces/woman_sad_to_happy.parquet``, 224 px crops). The tests check
these paths on the CPU device; here the same code runs on ``--device``
(default cuda) and is compared with the CPU:

1. crops: nvJPEG decoding + resize on the device vs libjpeg-turbo on the CPU
   (decoders differ by a few grey levels);
2. features: ``features.extract_video`` with a seeded ``legacy_xception`` at
   96 px, crops decoded on the device under bf16 autocast, vs OpenCV in
   workers on the CPU in float32 (embedding and probabilities within bf16's
   error through the backbone; predicted classes agree);
3. training: two epochs of ``frame_model.train_epoch`` on device-decoded,
   augmented batches: finite losses, the weights change;
4. fused grid (LSTMs, GRU, transformer): ``fused_training.train_points`` on the device (one mask draw
   for all points, fused Adam) trains every point; a dropout-free point
   follows the same point trained alone on the CPU (``sequence_model.train``)
   within float tolerance.

Each check prints PASS or FAIL with its figures; the exit status is the number
of failures. Run it with ``--device cpu`` to check the script itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.features import feature_extraction
from ferseq.frame_model import crops, device_crops, network, training
from ferseq.sequence_model import classifier, fused_training  # noqa: E402

CLASSES = ["neutral", "happy", "sad", "pensive"]
failures = 0


def report(name: str, ok: bool, figures: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figures}", flush=True)


def encoded_crops(faces: Path, n: int) -> list[torch.Tensor]:
    table = crops.face_rows(pq.read_table(faces, columns=["face_found", "crop"]))
    data, offsets = crops.flat_bytes(table["crop"].combine_chunks())
    return device_crops.split(torch.from_numpy(data.copy()), offsets)[:n]


def check_decoding(faces: Path, dev: torch.device) -> None:
    encoded = encoded_crops(faces, 256)
    for size in (224, 96):
        cpu = device_crops.decode_batch(encoded, size, "cpu").int()
        on_dev = device_crops.decode_batch(encoded, size, dev).cpu().int()
        diff = (cpu - on_dev).abs().float()
        report(f"crops decoded on {dev} at {size} px", on_dev.shape == cpu.shape and diff.mean() < 1.5,
               f"{len(encoded)} crops, mean |diff| {diff.mean():.3f} grey levels, max {diff.max():.0f}")


def check_features(faces: Path, dev: torch.device, folder: Path) -> None:
    torch.manual_seed(0)
    model = network.FrameModel("legacy_xception", CLASSES, input_size=96).eval()
    segments = pq.read_table(faces, columns=["segment_id"]).column("segment_id").unique().to_pylist()
    labels = {segment: CLASSES[0] for segment in segments}
    outputs = {}
    for name, device, decode in (("cpu", torch.device("cpu"), "workers"), (str(dev), dev, "device")):
        out = folder / f"features_{name}.parquet"
        started = time.perf_counter()
        stats = feature_extraction.extract_video(network.to_device(model, device), faces, labels, out, video_id="clip",
                                       batch_size=64, num_workers=2, decode=decode)
        print(f"  features on {name}: {stats['frames']} frames in {time.perf_counter() - started:.1f} s", flush=True)
        outputs[name] = {c: np.stack(pq.read_table(out, columns=[c]).column(c).to_numpy(zero_copy_only=False))
                         for c in ("embedding", "probs")}
    a, b = outputs["cpu"], outputs[str(dev)]
    emb_err = np.abs(a["embedding"] - b["embedding"]).max() / max(np.abs(a["embedding"]).max(), 1e-6)
    prob_err = np.abs(a["probs"] - b["probs"]).max()
    agree = (a["probs"].argmax(1) == b["probs"].argmax(1)).mean()
    report(f"features on {dev} vs cpu", emb_err < 0.05 and prob_err < 0.05 and agree > 0.95,
           f"embedding max |diff| {emb_err:.4f} of its range, probs max |diff| {prob_err:.4f}, "
           f"same class {agree:.3f}")


def check_training(faces: Path, dev: torch.device) -> None:
    table = crops.face_rows(pq.read_table(faces, columns=["face_found", "crop"])).slice(0, 128)
    labels = np.arange(table.num_rows) % len(CLASSES)
    cfg = {**network.settings({"frame_model": {"backbone": "legacy_xception", "input_size": 96,
                                                    "batch_size": 32, "inference_batch_size": 64}}), "augment": True}
    torch.manual_seed(0)
    model = network.to_device(network.FrameModel("legacy_xception", CLASSES, input_size=96), dev)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weights = training.class_weights(np.bincount(labels, minlength=len(CLASSES)), CLASSES).to(dev)
    optimizer = training.optimizer_for(model, 1e-3, dev)
    generator = torch.Generator().manual_seed(0)
    batches = training.frame_batches(table["crop"], labels, cfg, dev, generator, on_device=True)
    losses = [training.train_epoch(model, batches, optimizer, weights, dev) for _ in range(2)]
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    # evaluation decodes inside the model's autocast: its pixels must be the float32 ones
    val_loss, preds, _ = training.evaluate(model, training.frame_batches(table["crop"], labels, cfg, dev,
                                                                               on_device=True), weights, dev)
    report(f"frame-model training on {dev}, crops decoded and augmented there",
           all(np.isfinite(loss) for loss in losses) and changed and np.isfinite(val_loss) and len(preds) == len(labels),
           f"epoch losses {[round(loss, 4) for loss in losses]}, val loss {val_loss:.4f}")


def check_fused_grid(dev: torch.device) -> None:
    rng = np.random.default_rng(0)

    def windows(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 16, 32)).astype(np.float32)
        x[np.arange(n), :, y] += 1.0  # separable: the class is a feature's offset
        return x, y

    (tx, ty), (vx, vy) = windows(256), windows(96)
    points = [fused_training.Point(0.01, 0.0, 3)] + [fused_training.Point(lr, p, 3) for lr in (0.01, 0.003) for p in (0.3, 0.5)]
    common = dict(num_classes=3, epochs=6, patience=6, batch_size=32)
    for arch in ("lstm", "lstm2", "bilstm", "gru", "transformer"):
        results = fused_training.train_points(tx, ty, vx, vy, arch=arch, hidden=16, points=points, order_seed=3,
                                              device=dev, **common)
        alone = classifier.train(tx, ty, vx, vy, arch=arch, lr=0.01, hidden=16, dropout=0.0, seed=3, **common)
        fused_curve = np.array([h["val_loss"] for h in results[0].history])
        alone_curve = np.array([h["val_loss"] for h in alone.history])
        rel = float(np.abs(fused_curve - alone_curve).max() / alone_curve.max()) if len(fused_curve) == len(alone_curve) else 1.0
        trained = all(r.history[-1]["train_loss"] < r.history[0]["train_loss"] for r in results)
        model = classifier.SequenceClassifier(arch, 32, 16, 3, 0.0, window_length=16)
        model.load_state_dict(results[1].state_dict)
        report(f"fused {arch} grid on {dev}", trained and rel < 1e-2,
               f"{len(points)} points trained; dropout-free point vs alone on the CPU: val loss max rel diff {rel:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faces", type=Path, help="a faces Parquet file made on the CPU machine")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        checks = {"crops": lambda: check_decoding(args.faces, dev),
                  "features": lambda: check_features(args.faces, dev, Path(tmp)),
                  "training": lambda: check_training(args.faces, dev),
                  "fused LSTM grid": lambda: check_fused_grid(dev)}
        for name, check in checks.items():
            try:
                check()
            except Exception as err:  # noqa: BLE001 - one broken path must not hide the others' results
                traceback.print_exc()
                report(name, False, f"{type(err).__name__}: {err}")
    print(f"{failures} failure(s)")
    sys.exit(failures)


if __name__ == "__main__":
    main()
