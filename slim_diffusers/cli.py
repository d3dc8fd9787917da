"""The ``slim`` command line. Heavy libraries are imported inside each command, so ``slim --help`` and
``slim info`` start fast."""

import argparse
import sys
from typing import Optional, Sequence


def _cmd_info(args) -> int:
    from .bitstream import SLIMBitstream, compress_caption
    from .errors import SLIMBitstreamError

    status = 0
    for path in args.files:
        try:
            bs = SLIMBitstream.load(path)
        except (SLIMBitstreamError, OSError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            status = 1
            continue
        total = bs.num_bytes
        print(f"{path}")
        print(f"  format version   {bs.version}")
        print(f"  image size       {bs.width}×{bs.height}")
        print(f"  model            {bs.fingerprint.hex()}")
        print(f"  caption          {bs.caption!r} ({len(compress_caption(bs.caption))} bytes compressed)")
        print(f"  payload          {len(bs.payload)} bytes")
        print(f"  file             {total} bytes")
        print(f"  bits per pixel   {bs.bits_per_pixel:.4f}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slim", description="SLIM: low-bitrate image compression for machines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print the header and bits per pixel of .slim files")
    p.add_argument("files", nargs="+", help=".slim files")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
