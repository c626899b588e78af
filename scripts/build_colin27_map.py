"""Rebuild the committed Colin27 training map (``synthseg/data/maps/colin27.nii.gz``).

Fetches Colin27's whole-head T1 (Debian's ``mricron-data``) and segments it with a model
(:mod:`synthseg.data.pseudo_labels`). The committed map was built with the 1.5 mm model shipped
on 2026-12-06 (``cpu9``, commit f25fce5)::

    python scripts/build_colin27_map.py [--model DIR] [--out PATH] [--cache-dir DIR]
"""
import argparse
import sys
from pathlib import Path

from synthseg.data import datasets, pseudo_labels
from synthseg.data.training_labels import COLIN27_MAP


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=COLIN27_MAP, help=f"output map (default: {COLIN27_MAP})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")
    args = parser.parse_args(argv)
    try:
        scan = datasets.fetch("colin27_t1", args.cache_dir)
    except datasets.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rest = [str(scan), str(args.out)] + (["--model", str(args.model)] if args.model else [])
    return pseudo_labels.main(rest + (["--cache-dir", str(args.cache_dir)] if args.cache_dir else []))


if __name__ == "__main__":
    sys.exit(main())
