"""Offline validation of a training run: score every saved checkpoint on real scans.

    synthseg validate RUN_DIR --images scans/ --labels segs/ [--out RUN_DIR/validation]

For each checkpoint ``RUN_DIR/checkpoints/step-*.npz`` of a :func:`synthseg.training.synthetic.training`
run, the U-Net weights are restored, each validation scan is segmented with the prediction
pipeline (:func:`synthseg.inference.segmentation.segment_volume`: reorientation, resampling, normalisation,
clean-up, back to the scan's grid) and compared with its label map. Outputs (atomic):

* ``validation.csv``: step, subject, label, dice (one row per label, background excluded);
* ``validation_curve.png``: mean Dice against training step;
* ``summary.json``: mean Dice per step and the best checkpoint.

Resumable: steps already in ``validation.csv`` are not recomputed, so the command can be run
again while training goes on, or after it was interrupted.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.geometry import resample_to_grid
from lab2im.io import atomic_write_text, list_volume_files, load_volume

STEP_FILE = re.compile(r"step-(\d+)\.npz$")
FIELDS = ("step", "subject", "label", "dice")


@dataclass
class ValidationResult:
    """Mean Dice per checkpoint step, the best step and its checkpoint, and the files written."""

    mean_dice: dict[int, float]
    best_step: int
    best_checkpoint: Path | None
    out_dir: Path


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """``{step: path}`` of the periodic checkpoints of a run."""
    found = {}
    for p in sorted((Path(run_dir) / "checkpoints").glob("step-*.npz")):
        m = STEP_FILE.search(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("step", "").isdigit()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _pairs(images, labels) -> list[tuple[Path, Path]]:
    imgs, labs = list_volume_files(images, "image"), list_volume_files(labels, "label map")
    if len(imgs) != len(labs):
        raise InputError(f"{len(imgs)} validation images but {len(labs)} label maps (paired in sorted order)")
    return list(zip(imgs, labs))


def _ground_truth(label_path: Path, image_shape, image_affine) -> np.ndarray:
    """The label map on the image's grid (resampled nearest by world coordinates if needed)."""
    gt = load_volume(label_path)
    data = np.asarray(gt.data)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != tuple(image_shape) or not np.allclose(gt.affine, image_affine, atol=1e-4):
        data = resample_to_grid(data, gt.affine, image_shape, image_affine, order=0)
    return np.rint(data).astype(np.int32)


def network_for_run(run_dir: Path):
    """A :class:`~synthseg.inference.model.SegmentationModel` on the run's U-Net (any kind of
    run: synthetic, supervised, slices), ready to take each checkpoint's weights
    (:func:`synthseg.training.checkpoints.load_network_weights`)."""
    from synthseg.inference.model import load_model
    from synthseg.training.run_folder import read_spec

    read_spec(run_dir)  # a clear error for a folder that is not a run
    return load_model(run_dir)


def validate_training(run_dir, images, labels, out_dir=None, flip: bool = True,
                      progress: bool = True) -> ValidationResult:
    """Score every checkpoint of a training run on validation scans.

    Args:
        run_dir: a :func:`~synthseg.training.synthetic.training` run folder.
        images, labels: validation scans and their label maps (files, folders or ``.txt``
            lists), paired in sorted order; a label map on another grid than its scan is
            resampled onto it (nearest).
        out_dir: where to write (default ``run_dir/validation``).
        flip: use left/right flip averaging (twice the time).
        progress: show a progress bar.

    Returns:
        :class:`ValidationResult`.

    Raises:
        InputError: not a run folder, no checkpoints, mismatched counts, unreadable files.
    """
    from tqdm import tqdm

    from synthseg.evaluation.metrics import dice
    from synthseg.inference.segmentation import segment_volume
    from synthseg.training.checkpoints import load_network_weights

    run_dir = Path(run_dir)
    found = checkpoints(run_dir)
    if not found:
        raise InputError("no checkpoints (checkpoints/step-*.npz) to validate", run_dir)
    pairs = _pairs(images, labels)
    out = Path(out_dir) if out_dir is not None else run_dir / "validation"
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "validation.csv"
    rows = _read_rows(csv_path)
    settings_path = out / "settings.json"
    if rows and settings_path.is_file():  # scores of one folder are made alike (flip or not)
        made = json.loads(settings_path.read_text()).get("flip")
        if made is not None and made != flip:
            raise InputError(f"these scores were made {'with' if made else 'without'} flip averaging; validate "
                             f"{'with' if made else 'without'} it again (--no-flip: without) or into another "
                             "folder (--out)", out)
    atomic_write_text(settings_path, json.dumps({"flip": flip}) + "\n")
    done = {int(r["step"]) for r in rows}
    todo = [s for s in sorted(found) if s not in done]
    if todo:
        seg_model = network_for_run(run_dir)
        scored = [int(v) for v in seg_model.labels if v != 0]
        scans = [(img, load_volume(img), lab) for img, lab in pairs]
        for step in tqdm(todo, desc="validating", unit="checkpoint", disable=not progress, file=sys.stderr):
            load_network_weights(found[step], seg_model.network)
            for img_path, volume, lab_path in scans:
                seg = segment_volume(volume, seg_model, flip=flip).native_segmentation()
                gt = _ground_truth(lab_path, seg.shape, volume.affine)
                for label, value in dice(gt, seg, scored).items():
                    rows.append({"step": step, "subject": img_path.name, "label": label, "dice": f"{value:.6f}"})
            _write_rows(csv_path, rows)  # after each checkpoint: an interrupted run keeps its work
    mean = {}
    for step in sorted({int(r["step"]) for r in rows}):
        mean[step] = float(np.mean([float(r["dice"]) for r in rows if int(r["step"]) == step]))
    best = max(mean, key=lambda s: (mean[s], -s))
    _plot_curve(mean, best, out / "validation_curve.png")
    summary = {"mean_dice": {str(k): v for k, v in mean.items()}, "best_step": best,
               "best_checkpoint": str(found[best]) if best in found else None,
               "subjects": [p[0].name for p in pairs]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return ValidationResult(mean, best, found.get(best), out)


def _plot_curve(mean: dict[int, float], best: int, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from synthseg.evaluation.plots import save_figure

    steps = sorted(mean)
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(steps, [mean[s] for s in steps], marker="o")
    ax.axvline(best, color="tab:green", linestyle="--", label=f"best: step {best} ({mean[best]:.3f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean Dice (validation scans)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


HELP = "score every checkpoint of a training run on real scans"


def add_arguments(parser):
    parser.add_argument("run_dir", type=Path, help="training run folder")
    parser.add_argument("--images", required=True, help="validation scans (file, folder or .txt list)")
    parser.add_argument("--label-maps", "--labels", dest="label_maps", required=True,
                        help="their label maps (file, folder or .txt list), in the same sorted order")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/validation)")
    parser.add_argument("--no-flip", action="store_true",
                        help="no left/right flip averaging (about 2x faster; default: flip, as predict)")
    parser.add_argument("--flip", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: all)")
    return parser


def run(args) -> int:
    from synthseg.inference.batch import apply_threads

    apply_threads(args.threads)
    result = validate_training(args.run_dir, args.images, args.label_maps, args.out, flip=not args.no_flip)
    for step, value in result.mean_dice.items():
        print(f"step {step:>8d}  mean Dice {value:.4f}{'  <- best' if step == result.best_step else ''}")
    print(f"best checkpoint: {result.best_checkpoint}; results in {result.out_dir}")
    return 0
