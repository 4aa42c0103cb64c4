"""The ``ferseq`` command (also ``python -m ferseq``).

``ferseq import <format> <path> -o annotations.csv`` turns a public dataset's
own layout into the annotation table (see :mod:`ferseq.importers`). Errors a
user can cause print one message, no traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ferseq import importers, logs
from ferseq.errors import FerseqError

EXIT_USER_ERROR = 2

LAYOUTS = {
    "ckplus": ("CK+ (Extended Cohn-Kanade)",
               "cohn-kanade-images/Sxxx/yyy/*.png image sequences, Emotion/Sxxx/yyy/*_emotion.txt labels; "
               "one sequence folder = one video, subject = Sxxx; unlabelled sequences are skipped"),
    "ravdess": ("RAVDESS",
                "Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4; full audio-video (01) and video-only (02) clips, "
                "audio-only (03) skipped; subject = actor AA, group = sex (odd male, even female)"),
    "cremad": ("CREMA-D",
               "VideoFlash/AAAA_SSS_EEE_LL.flv; subject = actor AAAA; group = sex from VideoDemographics.csv when present"),
    "folders": ("class folders (AFEW/DFEW style)",
                "<label>/<clip>, a clip being a video file or an image-sequence folder; subjects from "
                "--subject-regex, --subjects or --subject-from-clip"),
}


def _onset_apex(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ferseq", description="ferseq: video facial-emotion recognition with sequence models")
    commands = top.add_subparsers(dest="command", required=True, metavar="command")
    imp = commands.add_parser(
        "import", help="write the annotation table of a public dataset from its own layout",
        description="Turn a dataset's own layout into ferseq's annotation table (video, subject, label, start_frame, "
                    "end_frame, group). Video paths are relative to the dataset folder: use it as data.videos. "
                    "Every path not used is listed, with the reason, in <output>.skipped.csv and on stderr.")
    formats = imp.add_subparsers(dest="format", required=True, metavar="format")
    for name, (title, layout) in LAYOUTS.items():
        sub = formats.add_parser(name, help=f"{title}: {layout}", description=f"{title}. Layout: {layout}.")
        sub.add_argument("path", help="the dataset's root folder (becomes data.videos)")
        sub.add_argument("-o", "--output", required=True, help="annotation table to write, .csv or .parquet")
        sub.add_argument("--count-frames", choices=["decode", "header"], default="decode",
                         help="decode counts each clip's frames exactly (default); header trusts the container (faster)")
        sub.add_argument("--workers", type=int, default=4, help="clips probed in parallel (default 4)")
        if name == "ckplus":
            sub.add_argument("--onset-apex", nargs=2, type=_onset_apex, metavar=("N", "M"),
                             help="label the first N frames neutral and the last M frames with the sequence's emotion "
                                  "(default: the whole sequence is one segment with the emotion)")
        if name == "folders":
            who = sub.add_mutually_exclusive_group()
            who.add_argument("--subject-regex", metavar="REGEX",
                             help="regular expression with a named group 'subject', searched in each clip name, "
                                  "e.g. '^(?P<subject>[^_]+)_'")
            who.add_argument("--subjects", metavar="CSV", help="table with columns clip,subject (clip: path below the root, name, or name without suffix)")
            who.add_argument("--subject-from-clip", action="store_true", help="each clip is its own subject (identity may leak across splits)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(None)
    try:
        if args.command == "import":
            return _import(args)
    except FerseqError as err:
        print(f"ferseq: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0  # pragma: no cover - argparse requires a command


def _import(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in importers.OPTIONS[args.format]}
    result = importers.import_dataset(args.format, args.path, args.output, count_frames=args.count_frames,
                                      workers=args.workers, **options)
    print(result.report(args.output), file=sys.stderr)
    return 0
