"""Tutorial 1: a synthetic brain scan in three lines.

``BrainGenerator`` takes real label maps (here two whole-head maps in FreeSurfer label IDs,
skull and scalp included) and turns them into random synthetic MRI scans: random
deformation, random contrast (one Gaussian intensity per structure), bias field, resolution,
gamma. Each call gives a new scan and its segmentation, perfectly aligned.

    python scripts/tutorials/1_generation_in_three_lines.py [--out DIR] [--size 160] [--seed 0]

Writes ``image.nii.gz`` and ``labels.nii.gz`` (the first scan and its segmentation, on the
generator's affine) and ``mosaic.png`` (three scans, one with its labels overlaid).
"""
from _common import parse_args, save_mosaic, training_labels

args = parse_args("1_generation_in_three_lines", __doc__.split("\n\n")[0])
labels_dir = training_labels(args.voxel_size)  # a folder of label maps (.nii.gz), built once

# ---------------------------------------------------------------- the three lines
from synthseg import BrainGenerator  # noqa: E402

gen = BrainGenerator(labels_dir, seed=args.seed, output_shape=(args.size,) * 3)
image, labels = gen.generate_image()
# ---------------------------------------------------------------------------------

# image: float32 (X, Y, Z) in [0, 1]; labels: int32 (X, Y, Z) segmentation labels (FreeSurfer
# IDs; skull and scalp were generation labels only, so they are background here).
print(f"label maps: {[f.name for f in gen.files]}")
print(f"image {image.shape} {image.dtype}, intensities in [{image.min():.2f}, {image.max():.2f}]; "
      f"labels {labels.shape} {labels.dtype}, {len(set(labels.ravel().tolist()))} labels present")

# Save both as NIfTI. gen.affine places the (cropped) output grid in the label maps' world
# coordinates (RAS, mm), so the scan overlays the label maps in any viewer.
from lab2im.io import save_volume  # noqa: E402

save_volume(image, args.out / "image.nii.gz", affine=gen.affine)
save_volume(labels, args.out / "labels.nii.gz", affine=gen.affine)

# Every call draws new random parameters: two more scans, for the mosaic.
more = [gen.generate_image()[0] for _ in range(2)]
vox = f"{args.voxel_size:g} mm voxels"
save_mosaic([image, image, *more], args.out / "mosaic.png",
            titles=["scan 1 (first generate_image() call)", "scan 1 + its segmentation",
                    "scan 2 (next call: new contrast, shape, resolution)", "scan 3 (next call)"],
            labels=[None, labels, None, None],
            suptitle=f"BrainGenerator: {args.size}\u00b3 crops, {vox}, seed {args.seed}")
print(f"wrote {args.out / 'image.nii.gz'}, {args.out / 'labels.nii.gz'} and {args.out / 'mosaic.png'}")
