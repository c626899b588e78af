"""Rebuild the committed Colin27 training map (``synthseg/data/maps/colin27.nii.gz``).

Fetches Colin27's whole-head T1 (Debian's ``mricron-data``) and segments it with a model
(:func:`synthseg.data.pseudo_labels.run`). The committed map was made by the 1.5 mm
model shipped until ``cpu11`` replaced it (``cpu9``, commit f25fce5); the same map, voxel for
voxel, comes back only from that model::

    git archive f25fce5 models/synthseg_1.5mm | tar -x -C /tmp
    python scripts/build_colin27_map.py --model /tmp/models/synthseg_1.5mm [--out PATH] [--cache-dir DIR]

Without ``--model`` the shipped model labels it (a different map).
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
    return pseudo_labels.run(scan, args.out, args.model, args.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
