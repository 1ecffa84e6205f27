"""``segpipe convert coco``: COCO instances JSON -> YOLO-seg dataset (images, labels, data YAML)."""

from __future__ import annotations

import argparse
import logging

NAME = "convert"
HELP = "convert a dataset into YOLO-seg format (COCO instances JSON -> images/, labels/, data.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["coco"], help="source format")
    parser.add_argument("--json", required=True, help="COCO instances JSON (polygons, RLE or uncompressed RLE)")
    parser.add_argument("--images", required=True, help="folder holding the images named by file_name")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    parser.add_argument("--split", default=None, help="split name (default: JSON stem without 'instances_')")
    parser.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    parser.add_argument("--crowd", choices=["skip", "include"], default="skip",
                        help="iscrowd annotations: drop them (default; YOLO-seg has no ignore regions) or "
                             "convert them as ordinary instances")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output folder, replacing "
                                                             "images/<split> and labels/<split>")


def run(args: argparse.Namespace) -> int:
    from engines.data.convert import coco_to_yolo

    logging.getLogger("segpipe.data").setLevel(logging.WARNING)  # the summary below says it all
    report = coco_to_yolo(args.json, args.images, args.out, split=args.split, force=args.force,
                          copy=args.copy, crowd=args.crowd)
    print(f"segpipe convert: {report.summary()}")
    return 0
