"""`stream model build|fetch|info|eval`: parse, call the model package, return exit codes.

Handlers raise StreamError subclasses for user mistakes; `stream.cli` (or `main` below, for
`python -m stream.model.cli`) prints them as one `error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stream.errors import StreamError

DEFAULT_MODEL = "models/convnext-tiny.xml"

_BUILD_EPILOG = """\
examples:
  stream model build                      # generated weights (labels not meaningful), FP16
  stream model build --weights convnext_tiny_1k_224_ema.pth
  stream model build --precision FP32 --output /tmp/cx32.xml
"""
_FETCH_EPILOG = """\
examples:
  stream model fetch                      # download the official weights, verify, build
  stream model fetch --checkpoint-dir ~/weights --output models/convnext-tiny.xml
offline? download convnext_tiny_1k_224_ema.pth elsewhere, then:
  stream model build --weights convnext_tiny_1k_224_ema.pth
"""
_INFO_EPILOG = """\
examples:
  stream model info models/convnext-tiny.xml
FLOPs are 2 x multiply-accumulates of convolutions and matmuls (the OMZ convention).
"""
_EVAL_EPILOG = """\
examples:
  stream model eval --images ILSVRC2012_img_val --ground-truth val.txt
  stream model eval --images val/ --ground-truth val.txt --limit 1000 --precision f32
ground truth lines look like: ILSVRC2012_val_00000001.JPEG 65
"""


def _build(args: argparse.Namespace) -> int:
    from stream.model.builder import build_ir

    result = build_ir(args.output, args.weights, args.precision)
    if result.generated:
        source = "generated weights (labels are NOT meaningful)"
    elif result.official:
        source = f"{args.weights} (official checkpoint, SHA-384 verified)"
    else:
        source = f"{args.weights} (NOT the official checkpoint: SHA-384 differs)"
    print(
        f"built {result.path} + {result.path.with_suffix('.bin').name} "
        f"[{args.precision}] from {source}"
    )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from stream.model.builder import build_ir
    from stream.model.checkpoint import OFFICIAL_FILENAME, download_checkpoint, is_official

    target = Path(args.checkpoint_dir) / OFFICIAL_FILENAME
    if target.is_file() and is_official(target):
        print(f"{target} already present (SHA-384 verified)")
    else:
        urls = args.url or None
        if urls:
            download_checkpoint(target, urls, timeout=args.timeout)
        else:
            download_checkpoint(target, timeout=args.timeout)
        print(f"downloaded {target} (SHA-384 verified)")
    result = build_ir(args.output, target, args.precision)
    print(f"built {result.path} [{args.precision}] from the official weights")
    return 0


def _info(args: argparse.Namespace) -> int:
    from stream.model.info import read_stats

    stats = read_stats(args.model)
    print(f"model:      {stats.path}")
    for port in stats.inputs:
        print(f"input:      {port.name} {port.element_type} {port.shape}")
    for port in stats.outputs:
        print(f"output:     {port.name} {port.element_type} {port.shape}")
    print(f"parameters: {stats.parameters:,}")
    print(
        f"compute:    {stats.macs / 1e9:.3f} GMACs = {stats.gflops:.3f} GFLOPs "
        "(2 FLOPs per MAC; convolutions and matmuls)"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from stream.model.evaluate import evaluate

    result = evaluate(
        args.model,
        args.images,
        args.ground_truth,
        limit=args.limit,
        device=args.device,
        precision=args.precision,
    )
    print(result.summary())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_subcommands(model: argparse.ArgumentParser) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    sub = model.add_subparsers(title="commands", metavar="{build,fetch,info,eval}")

    def usage(_args: argparse.Namespace) -> int:
        model.print_help(sys.stderr)
        return 2

    model.set_defaults(func=usage)

    build = sub.add_parser(
        "build",
        help="build the convnext-tiny IR (generated or real weights)",
        description="Build the convnext-tiny OpenVINO IR (OMZ contract: input "
        "'image' BGR 0..255 [1,3,224,224], output 'probs' logits [1,1000]).",
        epilog=_BUILD_EPILOG,
        formatter_class=fmt,
    )
    build.add_argument(
        "--weights",
        metavar="CHECKPOINT",
        help="official-format checkpoint (convnext_tiny_1k_224_ema.pth); "
        "omit for deterministic generated weights",
    )
    build.add_argument(
        "--precision",
        choices=("FP16", "FP32"),
        default="FP16",
        help="weight precision stored in the .bin (default FP16)",
    )
    build.add_argument(
        "--output",
        default=DEFAULT_MODEL,
        metavar="PATH.xml",
        help=f"IR path; the .bin goes beside it (default {DEFAULT_MODEL})",
    )
    build.set_defaults(func=_build)

    fetch = sub.add_parser(
        "fetch",
        help="download the official weights and build the IR",
        description="Download convnext_tiny_1k_224_ema.pth (OMZ mirror, "
        "then the original URL), verify its SHA-384 and build the IR.",
        epilog=_FETCH_EPILOG,
        formatter_class=fmt,
    )
    fetch.add_argument(
        "--checkpoint-dir",
        default="models",
        metavar="DIR",
        help="where the .pth is kept (default models)",
    )
    fetch.add_argument(
        "--output",
        default=DEFAULT_MODEL,
        metavar="PATH.xml",
        help=f"IR path (default {DEFAULT_MODEL})",
    )
    fetch.add_argument("--precision", choices=("FP16", "FP32"), default="FP16")
    fetch.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    fetch.add_argument("--url", action="append", help=argparse.SUPPRESS)  # tests / mirrors
    fetch.set_defaults(func=_fetch)

    info = sub.add_parser(
        "info",
        help="inputs, outputs, parameters and FLOPs of an IR",
        epilog=_INFO_EPILOG,
        formatter_class=fmt,
    )
    info.add_argument("model", metavar="PATH.xml", help="an OpenVINO IR .xml")
    info.set_defaults(func=_info)

    ev = sub.add_parser(
        "eval",
        help="top-1/top-5 accuracy on an ImageNet-style folder",
        description="Measure top-1/top-5 accuracy with the accuracy "
        "preprocessing (shorter side 256, Pillow bicubic, centre crop 224).",
        epilog=_EVAL_EPILOG,
        formatter_class=fmt,
    )
    ev.add_argument("--images", required=True, metavar="DIR", help="folder of the images")
    ev.add_argument(
        "--ground-truth",
        required=True,
        metavar="FILE",
        help="'<image file> <class id>' per line (ImageNet val format)",
    )
    ev.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="PATH.xml",
        help=f"classifier IR (default {DEFAULT_MODEL})",
    )
    ev.add_argument("--limit", type=_positive, metavar="N", help="only the first N images")
    ev.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    ev.add_argument(
        "--precision",
        choices=("bf16", "f16", "f32"),
        help="inference precision hint (default: the device's own)",
    )
    ev.set_defaults(func=_eval)


def add_model_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `model` and its subcommands build/fetch/info/eval on the main CLI."""
    model = subparsers.add_parser(
        "model",
        help="build, fetch, inspect and evaluate the classifier IR",
        description="Work with the convnext-tiny IR: build it (generated or official weights), "
        "fetch the official weights, inspect an IR, measure accuracy.",
    )
    _add_subcommands(model)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stream.model.cli ...`: the model commands on their own, errors as one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(prog="stream model", description=__doc__)
    _add_subcommands(parser)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
