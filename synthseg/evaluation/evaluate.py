"""The ``synthseg evaluate`` command: arguments, summary table, exit status."""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from synthseg.evaluation.folders import Evaluation, evaluate_folders
from synthseg.evaluation.metrics import label_list, label_name_map
from synthseg.evaluation.surfaces import SURFACES


HELP = "Dice, surface distances and volumes of predictions vs ground truth (+ paired tests of two methods)"


def add_arguments(parser) -> None:
    """Options of ``synthseg evaluate``."""
    parser.add_argument("--gt", required=True, help="folder (or .txt list) of ground-truth label maps")
    parser.add_argument("--pred", required=True, help="folder (or .txt list) of predicted label maps")
    parser.add_argument("--pred2", default=None, help="predictions of a second method, compared with "
                        "--pred by Wilcoxon signed-rank tests")
    parser.add_argument("--labels", required=True, nargs="+",
                        help="labels to evaluate (e.g. 2 3 41 42), or one .npy file of labels")
    parser.add_argument("--out", required=True, help="output folder (metrics.csv, figures, summary.json)")
    parser.add_argument("--on-mismatch", choices=("resample", "error"), default="resample",
                        help="prediction on another grid than its ground truth: resample it (nearest "
                             "neighbour, with a warning; default) or stop with an error")
    parser.add_argument("--surfaces", choices=SURFACES, default="smooth",
                        help="surfaces of the distance metrics: 'smooth' (least squared curvature, "
                             "sub-voxel accurate; default) or 'fast' (area-minimising, ~8x faster, "
                             "Hausdorff distance up to a voxel too high on coarse axes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="worker threads (labels are evaluated in parallel; default: all usable CPUs)")


def parse_labels(values: Sequence[str]) -> list[int]:
    """``--labels`` values: integers, or a single ``.npy`` file of integers.

    Raises:
        InputError: unreadable ``.npy`` file, or values that are not integers.
    """
    if len(values) == 1 and str(values[0]).lower().endswith(".npy"):
        path = Path(values[0])
        if not path.is_file():
            raise InputError("no such label list file", path)
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise InputError(f"not a readable .npy file ({type(exc).__name__})", path) from None
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"expected numeric labels, got dtype {arr.dtype}", path)
        return label_list(arr)
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InputError(f"--labels must be integers or one .npy file, got {' '.join(values)}") from None


def summary_table(result: Evaluation) -> str:
    """Plain-text table: mean Dice per label and method, and with two methods the paired tests'
    p-values (Dice, HD95) and the better method."""
    labels = result.summary["labels"]
    names = label_name_map()
    headers = ["label", "name"] + [f"Dice {m}" for m in result.methods]
    paired = {(r["label"], r["metric"]): r for r in result.paired}
    if paired:
        headers += ["p Dice", "better Dice", "p HD95", "better HD95"]
    rows = []
    for label in labels:
        row = [str(label), names.get(label, f"label_{label}")]
        for m in result.methods:
            mean = result.summary["mean_dice"][m][str(label)]
            row.append("-" if mean is None else f"{mean:.3f}")
        if paired:
            for metric in ("dice", "hd95"):
                t = paired[(label, metric)]
                row += ["-" if math.isnan(t["p_value"]) else f"{t['p_value']:.3g}", t["better"] or "-"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
              for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    """``synthseg evaluate``: warnings are printed as one line each on stderr as they happen."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"synthseg: warning: {message}", file=sys.stderr)

    labels = parse_labels(args.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        result = evaluate_folders(args.gt, args.pred, labels, pred2_dir=args.pred2, out_dir=args.out,
                                  on_mismatch=args.on_mismatch, surfaces=args.surfaces, threads=args.threads)
    n = {m: s["n_matched"] for m, s in result.summary["methods"].items()}
    print(f"evaluated {', '.join(f'{m}: {k} subject(s)' for m, k in n.items())}; {len(labels)} label(s)")
    print(summary_table(result))
    print(f"wrote {len(result.written)} files to {args.out}/")
    for path, problem in result.failed:  # the others were evaluated; the exit status says some were not
        print(f"synthseg: error: {path}: {problem}", file=sys.stderr)
    return 1 if result.failed else 0
