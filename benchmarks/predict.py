"""End-to-end speed of `ferseq predict` on the woman demo clip (472 frames), with a finished run's model.

    python benchmarks/predict.py [--run results] [--workers 2] [--repeat 2]

``--run`` is a finished results folder (``make demo``) or an exported bundle.
Faces (every frame), the frame CNN, the CNN-LSTM on the window ending at every
frame, the Parquet, CSV and timeline PNG are all timed, as a user runs it; the
models (the frame CNN, the sequence model, and the faces stage's dlib detector
and 68-point landmark predictor) are loaded once, before the timing, and their
load time is printed apart. The last line is frames per second (target: >= 40
on the 2-core CPU machine).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.apply import predict  # noqa: E402
from ferseq.faces import face_extraction  # noqa: E402
from ferseq.frame_model.network import load_frame_model  # noqa: E402
from ferseq.sequence_model import grid_search  # noqa: E402

CLIP = REPO / "data" / "demo" / "videos" / "woman_sad_to_happy.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(REPO / "results"), help="results folder or bundle (default results/)")
    parser.add_argument("--workers", type=int, default=2, help="crop-decoding workers (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the median is printed (default 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bundle = predict.load_run(args.run)
    started = time.perf_counter()
    model = load_frame_model(bundle.frame_model, "cpu")
    sequence = grid_search.load_model(bundle.sequence_model)[0]
    # The faces stage's models, with the config predict_video gives it: they are cached per process, so the
    # timed runs below find them loaded (the landmark predictor alone is a 100 MB file that takes seconds).
    face_extraction.make_tracker({**face_extraction.DEFAULTS, **bundle.faces, "skip_faceless_videos": True})
    loading = time.perf_counter() - started
    rates = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = predict.predict_video(CLIP, bundle, Path(out), model=model, sequence=sequence,
                                           num_workers=args.workers)
            rates.append(result.frames / (time.perf_counter() - started))
    print(f"model: {bundle.source}, input {model.input_size} px, windows of {bundle.window_length}; "
          f"models loaded in {loading:.1f} s (not timed below)")
    print(f"runs: {', '.join(f'{r:.1f}' for r in rates)} frames/s")
    print(f"predict, {CLIP.name} ({result.frames} frames): {statistics.median(rates):.1f} frames/s")


if __name__ == "__main__":
    main()
