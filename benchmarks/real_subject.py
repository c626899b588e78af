"""Cortex Dice on a real subject against its own white and pial surfaces, for several models.

    python benchmarks/real_subject.py --model models/synthseg_1.5mm --model /tmp/models/synthseg_2mm
    python benchmarks/real_subject.py --quick      # T1 only, network alone, no flip (smoke run)

The development set (``benchmarks/accuracy.py``) is made of templates and the sharp subjects
(``benchmarks/sharp_subjects.py``) of the training maps' anatomy. This benchmark is one real
brain the models never saw: pycortex's example subject S1 (a whole-head 1 mm T1 with its
FreeSurfer white and pial surfaces, shipped in the ``pycortex==1.4.0`` sdist, BSD-2-Clause;
``synthseg.data.datasets``). S1 is a test subject: never train on it or tune to it.

* **Truth**: the cortical ribbon, voxels whose centres are inside the pial surface and outside
  the white surface (:func:`lab2im.geometry.mesh_interior`), left and right hemispheres apart.
  Near the medial wall the two surfaces meet, so the ribbon is empty there.
* **Scans**: the T1 as shipped; the T1 with its intensities inverted inside the head (dark
  white matter, bright CSF, as a T2); the T1 remapped tissue by tissue to relative proton
  densities (CSF brightest, then grey and white matter; air and bone dark; :data:`PD_KNOTS`);
  and the T1 acquired as 5 mm axial slices (five 1 mm
  slices averaged, scored against each thick slice's middle 1 mm slice, as
  ``sharp_subjects.thick_slices``). The remapped scans are the same anatomy and noise: they test
  reading contrast, not real T2 or PD physics.
* **Score**: Dice of the predicted cerebral cortex (labels 3 and 42) with the ribbon, both
  hemispheres together and each with its own side's label, with the whole prediction pipeline
  (flip averaging, refinement by the scan's intensities unless ``--no-refine``, back to 1 mm).
* **Ceiling**: the Dice of the truth itself after a round trip through a model's voxel size
  (averaged over each coarse voxel by linear down-sampling with anti-aliasing, interpolated back
  linearly, thresholded at 0.5): what a perfect model at that voxel size would score.

Writes a table and ``benchmarks/results/real_subject.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("synthseg", "keras", "numpy", "nibabel")
#: FreeSurfer labels of the left and right cerebral cortex
CORTEX = {"lh": 3, "rh": 42}
CASES = ("T1", "T1 inverted", "T1 remapped as PD", "T1, 5 mm axial slices")
SURFACES = ("pia_lh", "pia_rh", "wm_lh", "wm_rh")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="model folder (repeat for several; default: the shipped model)")
    p.add_argument("--no-refine", action="store_true", help="the network alone (no refinement by the scan)")
    p.add_argument("--quick", action="store_true", help="smoke run: the T1 only, network alone, no flip")
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache (default: ~/.cache/synthseg)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "real_subject.json")
    return p.parse_args(argv)


def load_subject(cache_dir=None):
    """S1's T1 in RAS axes and its ribbons: ``(t1 (X, Y, Z) float32, affine (4, 4) mm,
    {"lh": bool ribbon, "rh": bool ribbon})``."""
    import nibabel as nib
    import numpy as np

    from lab2im.geometry import mesh_interior
    from synthseg.data import datasets

    paths = dict(zip(("t1", *SURFACES), datasets.fetch_many(
        ["pycortex_s1_t1", *(f"pycortex_s1_{s}" for s in SURFACES)], cache_dir)))
    image = nib.as_closest_canonical(nib.load(str(paths["t1"])))
    t1 = np.asarray(image.dataobj, np.float32)
    inside = {}
    for name in SURFACES:
        mesh = nib.load(str(paths[name]))
        inside[name] = mesh_interior(mesh.darrays[0].data, mesh.darrays[1].data, t1.shape, image.affine)
    ribbons = {h: inside[f"pia_{h}"] & ~inside[f"wm_{h}"] for h in CORTEX}
    return t1, image.affine, ribbons


def head_mask(t1):
    """The head: voxels above 5% of the 99th percentile, closed and with holes filled."""
    import numpy as np
    from scipy import ndimage

    mask = t1 > 0.05 * np.percentile(t1, 99)
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)


#: T1 intensity (a fraction of white matter's) -> PD-like intensity, linear in between: air and
#: bone dark in both, CSF the brightest, then grey matter, white matter, and fat (brighter than
#: white matter in a T1) bright again: relative proton densities, not a simulation
PD_KNOTS = ((0.0, 0.0), (0.15, 0.2), (0.3, 1.0), (0.65, 0.82), (1.0, 0.7), (1.4, 0.9))


def contrasts(t1):
    """The three 1 mm scans of :data:`CASES` made from the T1 (see the module docstring):
    ``{name: (X, Y, Z) float32}``. White matter's level is the T1's 99th percentile inside the
    head (:func:`head_mask`); the PD-like scan maps the T1 through :data:`PD_KNOTS`."""
    import numpy as np

    head = head_mask(t1)
    wm = float(np.percentile(t1[head], 99))
    inverted = np.where(head, wm - np.clip(t1, 0, wm), 0).astype(np.float32)
    x, y = zip(*PD_KNOTS)
    pd = np.where(head, np.interp(t1 / wm, x, y), 0).astype(np.float32)
    return {CASES[0]: t1, CASES[1]: inverted, CASES[2]: pd}


def cortex_dice(ribbons, segmentation) -> dict:
    """Dice of the predicted cortex with the ribbons: both hemispheres, and each with its label."""
    import numpy as np

    out = {"cortex": mask_dice(ribbons["lh"] | ribbons["rh"], np.isin(segmentation, list(CORTEX.values())))}
    out.update({h: mask_dice(ribbons[h], segmentation == label) for h, label in CORTEX.items()})
    return out


def mask_dice(a, b) -> float:
    """Dice of two boolean masks (1.0 when both are empty; :func:`synthseg.evaluation.metrics.dice`)."""
    from synthseg.evaluation.metrics import dice

    return dice(a.view("uint8"), b.view("uint8"), [1])[1]


def ceiling(ribbons, affine, voxel_mm: float) -> float:
    """Cortex Dice of the truth after a round trip through ``voxel_mm`` voxels (see the module
    docstring)."""
    import numpy as np

    from lab2im.geometry import resample_to_grid, resample_volume
    from lab2im.io import Volume

    truth = (ribbons["lh"] | ribbons["rh"]).astype(np.float32)
    coarse = resample_volume(Volume(truth, affine), voxel_mm, order=1, anti_alias=True)
    back = resample_to_grid(np.asarray(coarse.data), coarse.affine, truth.shape, affine, order=1) > 0.5
    return mask_dice(truth > 0.5, back)


def measure(model, scans, ribbons, affine, refine: bool, flip: bool) -> dict:
    """Cortex Dice of ``model`` on each scan of ``scans`` (``{case: image}``; the 5 mm case is
    made here from the T1) and the seconds each took."""
    import numpy as np

    from benchmarks.sharp_subjects import thick_slices
    from lab2im.io import Volume
    from synthseg.inference.segmentation import segment_volume

    per_case = {}
    for case in scans:
        t0 = time.perf_counter()
        if case == CASES[3]:
            lh = ribbons["lh"].astype(np.uint8) + 2 * ribbons["rh"].astype(np.uint8)
            image, truth, slice_affine = thick_slices(scans[case], lh, 5)
            truth_ribbons = {"lh": truth == 1, "rh": truth == 2}
            volume = Volume(image, affine @ slice_affine)
        else:
            truth_ribbons, volume = ribbons, Volume(scans[case], affine)
        seg = segment_volume(volume, model, flip=flip, refine=refine)
        per_case[case] = {**cortex_dice(truth_ribbons, seg.native_segmentation()),
                          "seconds": time.perf_counter() - t0}
        print(f"  {case}: cortex {per_case[case]['cortex']:.3f} ({per_case[case]['seconds']:.0f} s)", flush=True)
    return per_case


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from lab2im.errors import InputError
    from synthseg.inference.model import default_model_path, load_model

    try:
        paths = args.model or [str(default_model_path())]
        models = [(p, load_model(p)) for p in paths]
        t1, affine, ribbons = load_subject(args.cache_dir)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scans = contrasts(t1)
    if args.quick:
        scans = {CASES[0]: scans[CASES[0]]}
    else:
        scans[CASES[3]] = t1
    refine, flip = not (args.no_refine or args.quick), not args.quick
    results, rows, ceilings = [], [], {}
    for path, model in models:
        voxel = float(np.mean(model.voxel_size))
        print(f"{path}:", flush=True)
        per_case = measure(model, scans, ribbons, affine, refine, flip)
        if voxel not in ceilings:  # the truth's round trip depends on the voxel size only
            ceilings[voxel] = ceiling(ribbons, affine, voxel)
        r = {"model": str(path), "voxel_mm": voxel, "refined": refine, "flip": flip, "per_case": per_case,
             "mean_cortex": float(np.mean([c["cortex"] for c in per_case.values()])),
             "spread_cortex": float(np.ptp([c["cortex"] for c in per_case.values()])),
             "ceiling_cortex": ceilings[voxel]}
        results.append(r)
        rows.append([Path(path).name, voxel, *(round(per_case[c]["cortex"], 3) for c in scans),
                     round(r["mean_cortex"], 3), round(r["spread_cortex"], 3), round(r["ceiling_cortex"], 3),
                     f"{sum(c['seconds'] for c in per_case.values()):.0f} s"])
    how = "network alone" if not refine else "refined"
    print(f"pycortex S1 (real subject, 1 mm), cortex Dice against its own surfaces, {how}"
          f"{', flip averaging' if flip else ''}; ceiling: a perfect model at that voxel size")
    print(common.format_table(["model", "voxel mm", *scans, "mean", "spread", "ceiling", "time"], rows))
    out = common.write_results(args.out, "real_subject",
                               {"subject": "pycortex==1.4.0 S1", "cases": list(scans), "refined": refine,
                                "flip": flip,
                                "ribbon_ml": {h: float(m.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
                                              for h, m in ribbons.items()}},
                               results, PACKAGES)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
