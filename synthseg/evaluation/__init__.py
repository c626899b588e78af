"""Evaluate segmentations against ground truth: Dice, surface distances, volumes, paired tests.

Metrics (per label, numpy/scipy only):

* **Dice** ``2 |A n B| / (|A| + |B|)``.
* **Surface distances** in mm, between sub-voxel *surfaces* of the two masks, in the way of
  DeepMind's ``surface-distance`` package refined by constrained surface nets (Gibson 1998)
  bent to least curvature (the smoothness prior of Lempitsky 2010, put on the net):

  - the surface of a mask is one point per *cell*, the box between 2x2x2 neighbouring voxel
    centres, whose eight voxels are not all inside nor all outside the mask (voxels beyond the
    grid count as outside). The *net* links the cells across each cell face with both inside
    and outside voxels. Each point starts at its cell's centre (the corner shared by the eight
    voxels) and is moved :data:`SURFACE_RELAXATION` times to the mean of its neighbours while
    kept inside its cell: this smooths the voxel staircase into a surface close to the true
    one wherever it is oblique to the grid, but pulls the net taut (it minimises area): it
    lies inside convex parts and outside concave ones, and a flat patch facing a grid axis
    (the cap of a sphere along a coarse axis) stays flat in the middle of its cells, up to
    half a voxel from the true surface;
  - ``surfaces="smooth"`` (the default) then bends the net to the least squared curvature
    with every point still in its cell: the points minimise ``sum ||L x||^2``, ``L x`` the
    difference between a point and the mean of its neighbours (the umbrella Laplacian, a
    discrete curvature vector), by accelerated projected gradient (FISTA with adaptive
    restart) until no point moves more than :data:`SMOOTH_TOLERANCE` voxel over
    :data:`SMOOTH_CHECK` steps. Curvature is then carried smoothly across flat patches, which
    become caps of the right height, and the taut bias is gone. ``surfaces="fast"`` stops
    after the relaxation (about 8x faster on 1 mm brains; see the accuracy below);
  - each point carries the area (mm^2) of surface it stands for: the voxel faces between
    inside and outside voxels in its cell, a quarter of each face's area (a face has four
    corners), summed as oriented vectors (voxel size on each axis) for each connected part of
    the cell, so an oblique plane gets its true area rather than its staircase's;
  - for every point of one surface the distance (mm, Euclidean with the voxel size on each
    axis) to the nearest point of the other is found with a KD-tree. Only the bounding box of
    the two masks is handled; the net is computed relative to its first cell, so the result
    is bit for bit that of the whole grid.

  From the two directed sets of distances, pooled:

  - ``hausdorff``: the largest distance, either way (symmetric Hausdorff distance);
  - ``hd95``: the area-weighted 95th percentile of the pooled distances: the smallest distance
    ``d`` such that the points at ``d`` or less carry at least 95% of the two surfaces' total
    area. Note: other tools (MedPy, MONAI) take instead the larger of the two directed 95th
    percentiles, which is greater or equal;
  - ``mean_surface``: the area-weighted mean of the pooled distances, ``(sum_A w d + sum_B w d)
    / (area_A + area_B)`` (average symmetric surface distance).

  Accuracy, ``benchmarks/surface_accuracy.py``: 100 random pairs of concentric spheres per
  voxel size (radii 4 to 32 mm, random sub-voxel centres; every distance is ``R - r``). Smooth
  surfaces: Hausdorff +0.23 to +0.76 mm at 1 x 1 x 2 mm, +0.17 to +0.48 at 0.8 x 1 x 1.5,
  +0.28 to +0.94 at 1 x 1 x 3, +0.09 to +0.35 at 0.5 x 0.5 x 1; HD95 and the mean surface
  distance closer still: every metric of all 400 pairs within half the largest voxel side.
  Fast surfaces: Hausdorff up to +1.27, +0.93, +2.16 and +0.74 mm (85 to 93 pairs in 100
  within half a voxel); for comparison, voxel surfaces with distance transforms (as MedPy and
  MONAI measure): up to +1.96, +1.35, +2.44 and +0.92 mm (69 to 77 in 100), with mean surface
  distances down to -0.72 mm. ``tests/evaluation/test_evaluate.py`` checks fixed and random cases.

* **Volumes**: ``volume_true_mm3``, ``volume_pred_mm3``, ``volume_diff_mm3`` (predicted minus
  true) and ``volume_diff_rel`` (the difference over the true volume).

Empty labels are reported, not raised: absent from both maps, Dice is 1 and the distances 0;
absent from one map only, Dice is 0 and the distances ``inf`` (relative volume difference:
``inf`` when the label is only predicted, 0 when absent from both).

Whole studies: :func:`evaluate_folders` matches ground truth and predictions by subject name,
writes ``metrics.csv`` (one row per subject, method, label and metric), box plots of Dice and
HD95 per label and method, ``summary.json``, and with a second method ``paired_tests.csv``
(:func:`paired_test`, Wilcoxon signed-rank per label and metric). The ``synthseg evaluate``
command runs it.

Example::

    >>> from synthseg import evaluation
    >>> rows = evaluation.evaluate_pair("gt/sub-01.nii.gz", "pred/sub-01_synthseg.nii.gz", [2, 3, 41, 42])
    >>> result = evaluation.evaluate_folders("gt", "pred", [2, 3, 41, 42], pred2_dir="pred_other", out_dir="eval")
"""
from synthseg.evaluation.folders import (
           CSV_COLUMNS,
           PAIRED_COLUMNS,
           Evaluation,
           evaluate_folders,
           evaluate_pair,
           match_subjects,
           subject_key,
)
from synthseg.evaluation.metrics import (
           METRICS,
           dice,
           evaluate_arrays,
           surface_distances,
           volume_difference,
)
from synthseg.evaluation.statistics import ALPHA, paired_test
from synthseg.evaluation.surfaces import SURFACES, directed_distances, surface_points

__all__ = ["ALPHA", "CSV_COLUMNS", "METRICS", "PAIRED_COLUMNS", "SURFACES", "Evaluation", "dice", "directed_distances",
           "evaluate_arrays", "evaluate_folders", "evaluate_pair", "match_subjects", "paired_test", "subject_key",
           "surface_distances", "surface_points", "volume_difference"]
