"""The ringckpt command of the Python package: `python3 -m ringckpt convert SRC DST`.

Exit status: 0 on success, 1 when the command fails (a ringckpt.Error, its
message on stderr), 2 on a usage error.
"""

import argparse
import sys

from . import convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m ringckpt",
                                     description="ringckpt checkpoints for PyTorch.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    convert.add_subcommand(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
