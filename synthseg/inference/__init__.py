"""Segment real scans of any contrast and resolution with a trained U-Net (``mri_synthseg``'s job).

    >>> from synthseg.inference import load_model, predict
    >>> model = load_model("runs/mine")          # a run folder, or a .keras file beside labels.npy
    >>> report = predict("scans/", "segs/", model, vol="volumes.csv", qc="qc.csv", png="png/")
    >>> report.failed                             # [(path, problem), ...]: the scans that could not be done

Per scan (:func:`segment_volume` does steps 2-9 on a :class:`~lab2im.io.Volume` in memory):

1. **Read** a NIfTI or MGZ file (:func:`read_scan`). A 4D image keeps its *first* volume (the
   only one read; with a warning when there are several); a file whose first volume has more
   than :data:`lab2im.io.MAX_VOXELS` voxels (refused from its header, before reading), a 2D
   image or a single voxel, an axis under :data:`MIN_VOXELS` voxels, NaN or
   infinite voxels, or an empty image (every voxel equal, e.g. all zero) are errors: the scan
   is reported and skipped. NaN/Inf voxels are *not* silently replaced: the header or the
   processing that produced them is usually wrong; set them to 0 yourself if they are only
   outside the head.
2. **Reorient** to canonical RAS (voxels moved, never interpolated; recorded, see
   :func:`lab2im.geometry.reorient_to_canonical`).
3. **Resample** to the model's voxel size (the generator's ``voxel_size``, 1 mm by default;
   anti-aliased, linear) when any axis is outside [0.95, 1.05] x that size. The result is the
   *network grid*.
4. **Normalise** intensities with :func:`lab2im.normalisation.normalise_intensities`, the
   function training used: the 0.5th and 99.5th percentiles (of the whole network grid) go
   to 0 and 1, clipped to [0, 1]; for a supervised model trained with
   ``normalisation="zscore"``, then a z-score within the foreground (background 0).
5. **Crop or pad** (centred, recorded; padding is 0) to a multiple of the U-Net's
   :func:`~synthseg.nn.unet.required_multiple`; with ``crop``, to that size around the centre
   (rounded up to the multiple): voxels outside are background.
6. **U-Net** posteriors, in overlapping tiles of at most ``tile_size`` voxels per axis
   (blended with weights that fall off linearly over the ``tile_overlap`` voxels at each tile
   edge; a volume that fits in one tile is predicted whole). This bounds memory: the SynthSeg
   U-Net needs about 1.3 kB per voxel of its input on the CPU (TensorFlow), so a whole 1 mm
   head at once (208 x 240 x 208 after padding) would need about 14 GB; with the default
   112-voxel tiles a 193 x 229 x 193 scan peaks at about 3.5 GiB (``benchmarks/predict.py``).
   A 2D/2.5D model (trained on slices, :mod:`synthseg.training.slices`) is instead run slice by slice
   across its axis, in batches, and the network grid is padded in the slice plane only.
7. **Flip averaging** (``flip=True``): each tile is also predicted left/right flipped (array
   axis 0, which is L-R after step 2); that prediction is flipped back, its left and right
   label channels are swapped (:meth:`SegmentationModel.flip_permutation`) and it is averaged
   with the direct one.
8. **Clean-up** (``cleanup=True``, :func:`clean_posteriors`): first the whole brain (voxels
   whose non-background posteriors sum to more than 0.25) keeps only its largest connected
   component, so stray "brain" in the face or neck becomes background; then every structure
   keeps only its largest connected component (26-connectivity); the posterior of a removed voxel for that
   structure is set to 0 and the voxel's posteriors are renormalised, so it goes to its next
   most likely label (voxels that would then form a stray part of that label go to
   background). Background voxels enclosed by the brain (holes, including those) get the
   label of the nearest structure. Changed voxels' posteriors are kept consistent: the
   segmentation is always the argmax of the saved posteriors.
9. **Back to the native grid** (``keep_native=True``): labels are mapped to the input's own
   grid (shape, affine, header) through world coordinates: exactly (only moving voxels) when
   nothing was resampled, else the posteriors are interpolated linearly and each voxel takes
   the most likely label (smooth boundaries finer than the network's voxels). With
   ``keep_native=False`` every output stays on the network grid (canonical RAS, model voxel size).

Outputs (each written atomically: a killed run never leaves a half-written file):

* segmentation: ``int32`` labels (FreeSurfer IDs); a folder gets ``<name>_synthseg.nii.gz``;
* ``post``: posteriors, 4D float32, one channel per label in :attr:`SegmentationModel.labels`
  order (``<name>_posteriors.nii.gz``);
* ``resample``: the image the network saw, on the network grid, intensities normalised
  (step 4) (``<name>_resampled.nii.gz``);
* ``vol``: CSV, one row per scan: ``subject``, ``total intracranial`` (sum of every
  non-background structure) and one column per structure (FreeSurfer names), in mm³. Volumes
  are **soft**: the sum of the (cleaned) posteriors on the network grid times the voxel volume,
  as ``mri_synthseg`` reports them (more precise than counting voxels of a thick-slice grid);
* ``qc``: CSV, one row per scan: ``qc`` (a score in [0, 1], the mean over groups of
  structures of how sure the network was of each group times how much of it survived the
  clean-up; 0 when nothing is found: :meth:`Segmentation.qc_scores`) and the score per group;
  a scan scoring below the model's :attr:`SegmentationModel.qc_threshold` is reported as a
  warning (likely failed);
* ``png``: the mid sagittal, coronal and axial slices of the network's image with the labels
  in FreeSurfer colours (``<name>_synthseg.png``).

Batches: scans are read and preprocessed in a background thread while the previous one is
segmented; a scan that fails is reported (file and problem) and skipped, the others finish,
and :class:`PredictReport` lists the failures (the CLI then exits with status 1);
``skip_existing`` skips the scans whose outputs (CSV rows included) are all there, so a killed
batch can be re-run (the temporary files a ``kill -9`` left behind are removed first). A
failed write (disk full) is reported like a bad scan, naming the file; the older file of that
name, if any, is left as it was.
"""
from synthseg.inference.batch import (
           SEG_SUFFIX,
           PredictReport,
           apply_threads,
           predict,
           set_threads,
)
from synthseg.inference.model import (
           MODELS_DIR,
           NETWORK_FILES,
           SegmentationModel,
           default_model_path,
           load_model,
           lr_permutation,
)
from synthseg.inference.postprocessing import (
           clean_posteriors,
           keep_largest_brain,
           structure_volumes,
)
from synthseg.inference.preprocessing import prepare_volume
from synthseg.inference.reading import MIN_VOXELS, read_scan
from synthseg.inference.segmentation import QC_THRESHOLD, Segmentation, segment_volume
from synthseg.inference.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_OVERLAP", "MIN_VOXELS", "MODELS_DIR", "NETWORK_FILES", "QC_THRESHOLD",
           "SEG_SUFFIX", "PredictReport", "Segmentation", "SegmentationModel", "apply_threads", "clean_posteriors",
           "default_model_path", "keep_largest_brain", "load_model", "lr_permutation", "predict", "prepare_volume",
           "read_scan", "segment_volume", "set_threads", "structure_volumes"]
