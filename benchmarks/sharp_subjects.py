"""Accuracy on sharp 1 mm synthetic subjects, with the whole prediction pipeline, for several models.

    python benchmarks/sharp_subjects.py --model models/synthseg_1.5mm --model /tmp/models/synthseg_2mm
    python benchmarks/sharp_subjects.py --quick      # one small scan, the shipped model

(``--model`` takes model folders, as ``benchmarks/accuracy.py``; the 2 mm model shipped until
2026-12-06 comes back with ``git archive ba1473e models/synthseg_2mm | tar -x -C /tmp``.)

The development set (``benchmarks/accuracy.py``) is made of templates: averages of many brains,
blurry, with a CSF ring whose thickness is a convention of each template. The scans a model is
finally judged on are real subjects at 1 mm, sharp, with CSF in the sulci. This benchmark
measures the other side: the generator (:class:`synthseg.generation.BrainGenerator`) makes whole
heads at 1 mm from the training label maps with a held-out seed (``--seed``) and **no resolution
loss or blur** (``resolution_prob=0``), random contrast, bias field and deformation (the
generator's defaults); each is segmented like a user's scan (:func:`synthseg.inference.segmentation.segment_volume`:
resampled to the model's voxel size, flip averaging, refined by the scan's intensities, back to 1
mm), with and without the refinement. ``--slice-mm 5`` acquires each subject as 5 mm axial
slices instead (:func:`thick_slices`: five 1 mm slices averaged, the header saying so) and scores
it against the truth of each thick slice's middle 1 mm slice. Dice of the cortex (labels 3/42), of GM/WM/CSF
(:func:`synthseg.data.labels.tissue_groups`) and of the brain (every label but 0), per scan and
on average; each model is also compared with the first, scan by scan.

The anatomy is the training maps' own (deformed), so this measures how well a network reads sharp
1 mm contrast, not how it generalises to new brains. The generator's intensities are one Gaussian
per label, which is the refinement's own model: the refinement's gain here is an upper bound.

Writes a table and ``benchmarks/results/sharp_subjects.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("synthseg", "keras", "numpy")
REGIONS = ("cortex", "GM", "WM", "CSF", "brain")
#: FreeSurfer labels of the cerebral cortex
CORTEX = (3, 42)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="model folder (repeat for several; the first is the reference; default: the shipped model)")
    p.add_argument("--scans", type=int, default=None, help="synthetic subjects (default 6; --quick: 1)")
    p.add_argument("--seed", type=int, default=24680, help="generator seed (not one used in training)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="subject size in 1 mm voxels (default 160 192 160; --quick: 96 112 96)")
    p.add_argument("--labels", type=Path, default=None,
                   help="folder or file of 1 mm label maps (default: the training label maps)")
    p.add_argument("--slice-mm", type=int, default=1,
                   help="axial slice thickness in mm (whole 1 mm slices averaged; default 1: the subjects as made)")
    p.add_argument("--quick", action="store_true", help="smoke run: one small subject")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "sharp_subjects.json")
    args = p.parse_args(argv)
    if args.slice_mm < 1:
        p.error(f"--slice-mm must be a whole number of mm >= 1, got {args.slice_mm}")
    return args


def region_dice(truth, predicted) -> dict[str, float]:
    """Dice of :data:`REGIONS` between two FreeSurfer-label volumes of one shape (1.0 when a
    region is in neither)."""
    import numpy as np

    from synthseg.data.labels import tissue_groups
    from synthseg.evaluation.metrics import dice

    groups = tissue_groups()
    masks = {"cortex": list(CORTEX), "GM": groups["GM"], "WM": groups["WM"], "CSF": groups["CSF"]}

    def region(labels, name):
        return (labels > 0 if name == "brain" else np.isin(labels, masks[name])).astype(np.uint8)

    return {name: dice(region(truth, name), region(predicted, name), [1])[1] for name in REGIONS}


def subjects(labels, n: int, seed: int, shape):
    """``n`` sharp 1 mm synthetic subjects: a list of ``(image (X, Y, Z) float32, labels (X, Y, Z) int32)``."""
    from synthseg.generation.brain_generator import BrainGenerator

    generator = BrainGenerator(labels, seed=seed, output_shape=tuple(shape), resolution_prob=0.0, voxel_size=1.0)
    return [generator.generate_image() for _ in range(n)]


def thick_slices(image, truth, slice_mm: int):
    """A 1 mm subject acquired as ``slice_mm`` mm axial slices: ``(image, truth, affine)``.

    Each thick slice is the mean of ``slice_mm`` consecutive 1 mm slices along the last axis
    (the remainder at the top is dropped); its truth is that of the middle one (the lower middle
    for an even thickness), and the affine (1 x 1 x ``slice_mm`` mm) puts the thick slice's
    centre where that middle 1 mm slice was. ``slice_mm`` 1 gives the subject back.
    """
    import numpy as np

    if slice_mm < 1:
        raise ValueError(f"the slice thickness must be a whole number of mm >= 1, got {slice_mm}")
    x, y, z = image.shape
    z -= z % slice_mm
    thick = image[:, :, :z].reshape(x, y, -1, slice_mm).mean(-1).astype(np.float32)
    middle = (slice_mm - 1) // 2
    affine = np.diag([1.0, 1.0, float(slice_mm), 1.0])
    affine[2, 3] = (slice_mm - 1) / 2
    return thick, truth[:, :, middle:z:slice_mm], affine


def measure(model, scans, refine: bool, slice_mm: int = 1) -> dict:
    """Per-scan :func:`region_dice` of ``model`` on ``scans`` and the seconds it took."""
    import numpy as np

    from lab2im.io import Volume
    from synthseg.inference.segmentation import segment_volume

    per_scan, t0 = [], time.perf_counter()
    for image, truth in scans:
        image, truth, affine = thick_slices(image, truth, slice_mm)
        seg = segment_volume(Volume(image, affine), model, flip=True, refine=refine)
        per_scan.append(region_dice(truth, seg.native_segmentation()))
    return {"per_scan": per_scan, "mean": {r: float(np.mean([s[r] for s in per_scan])) for r in REGIONS},
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from lab2im.errors import InputError
    from synthseg.inference.model import default_model_path, load_model

    n = args.scans or (1 if args.quick else 6)
    shape = args.shape or ((96, 112, 96) if args.quick else (160, 192, 160))
    try:
        paths = args.model or [str(default_model_path())]
        if args.labels is None:
            from synthseg.data.training_labels import training_label_maps

            args.labels = training_label_maps(1.0)
        models = [(p, load_model(p)) for p in paths]
        scans = subjects(args.labels, n, args.seed, shape)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results, rows, first = [], [], {}
    for path, model in models:
        for refine in (False, True):
            r = measure(model, scans, refine, args.slice_mm)
            r.update(model=str(path), voxel_mm=float(np.mean(model.voxel_size)), refined=refine)
            if refine in first:  # scan by scan against the first model, refined or not alike
                r["better_than_first"] = {reg: int(sum(a[reg] > b[reg] for a, b in zip(r["per_scan"],
                                                                                       first[refine]["per_scan"])))
                                          for reg in ("cortex", "brain")}
            else:
                first[refine] = r
            results.append(r)
            wins = r.get("better_than_first")
            rows.append([Path(path).name, r["voxel_mm"], "yes" if refine else "no",
                         *(round(r["mean"][reg], 3) for reg in REGIONS),
                         round(float(np.mean([r["mean"][t] for t in ("GM", "WM", "CSF")])), 3),
                         "-" if wins is None else f"{wins['cortex']}/{n}", f"{r['seconds']:.0f} s"])
    acquired = "" if args.slice_mm == 1 else f", acquired as {args.slice_mm} mm axial slices"
    print(f"{n} sharp 1 mm synthetic subjects {list(shape)}{acquired}, seed {args.seed}, flip averaging")
    print(common.format_table(["model", "voxel mm", "refined", *REGIONS, "tissue mean",
                               "cortex better than first", "time"], rows))
    out = common.write_results(args.out, "sharp_subjects",
                               {"scans": n, "shape": list(shape), "seed": args.seed, "labels": str(args.labels),
                                "slice_mm": args.slice_mm},
                               results, PACKAGES)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
