"""Tutorial 5: the generator and the U-Net in 2D, on one axial slice of a real label map.

Every generator layer works on 2D label maps ``(batch, H, W, 1)`` as on 3D ones: deformation
(one rotation angle instead of three), left/right flip, per-structure Gaussian intensities,
bias field, resolution loss along one of the two axes, gamma. The same ``GeneratorOptions``
and ``labels_to_image_model`` build it; only the label map and ``output_shape`` are 2D. A 2D
U-Net (``UNetOptions(ndim=2)``) then learns from those synthetic slices.

    python scripts/tutorials/5_generator_2d.py [--out DIR] [--size 160] [--seed 0] [--steps 150]

Writes ``mosaic.png`` (the label slice, eight synthetic slices and one with its labels),
``segmentation.png`` (fresh synthetic slices, their labels and the U-Net's segmentation before
and after training) and ``summary.json`` (shapes, the Dice before and after training), and
prints them.
"""
import json
import sys

import numpy as np
from _common import parse_args, training_labels

args = parse_args("5_generator_2d", __doc__.split("\n\n")[0], add_arguments=lambda parser: parser.add_argument(
    "--steps", type=int, default=150, help="training steps of the 2D U-Net (default: %(default)s)"))
labels_dir = training_labels(args.voxel_size)
N_IMAGES = 8

from lab2im.io import atomic_write_text, list_volume_files  # noqa: E402
from lab2im.model import labels_to_image_model  # noqa: E402
from synthseg.evaluation.plots import save_slices  # noqa: E402
from synthseg.generation.brain_generator import brain_options, read_label_map  # noqa: E402
from synthseg.training.slices import label_slices  # noqa: E402

# ================================================================== a 2D label map
# read_label_map reorients to RAS, so axis 2 is inferior -> superior: label_slices(..., axis=2)
# gives axial slices (rows left -> right, columns posterior -> anterior). We take the one with
# the most cerebral white matter (labels 2 and 41): a slice through the lateral ventricles.
label_map = read_label_map(list_volume_files(labels_dir)[0]).data
axial = label_slices(label_map, axis=2)
wm = np.isin(axial, [2, 41]).sum(axis=(1, 2))
z = int(np.argmax(wm))
slice_labels = np.ascontiguousarray(axial[z])
print(f"label map {label_map.shape} at {args.voxel_size:g} mm; axial slice {z}: {slice_labels.shape}, "
      f"{len(np.unique(slice_labels))} labels")

# ================================================================== the 2D generator
# brain_options: the SynthSeg protocol's generation labels, classes and left/right pairs. In
# an axial RAS slice the first axis is left/right, so the default flip axis 0 still swaps the
# hemispheres. output_shape is 2D (a random square crop); the voxel size is the slice's.
size = min(args.size, *slice_labels.shape) // 8 * 8  # the crop must fit in the slice; U-Net: multiple of 8
options = brain_options(output_shape=(size, size), voxel_size=args.voxel_size,
                        max_res_iso=max(4.0, args.voxel_size), max_res_aniso=max(8.0, args.voxel_size))
generator = labels_to_image_model(options, slice_labels.shape, batch_size=N_IMAGES, seed=args.seed)
batch = np.repeat(slice_labels[None, ..., None], N_IMAGES, axis=0)  # (batch, H, W, 1) int32
images, segs = (np.asarray(t) for t in generator.predict_on_batch(batch))
print(f"synthetic images {images.shape} {images.dtype} in [{images.min():.2f}, {images.max():.2f}], "
      f"labels {segs.shape} {segs.dtype}")

# Each layer of the model is a step of the generation; in 2D its outputs are (batch, H, W, C).
print("layers: " + ", ".join(f"{layer.name} {tuple(layer.output.shape)}" for layer in generator.layers[1:]))

save_slices([np.zeros(slice_labels.shape), *images[..., 0], images[0, ..., 0]], args.out / "mosaic.png",
            labels=[slice_labels] + [None] * N_IMAGES + [segs[0, ..., 0]],
            titles=[f"label map, axial slice {z}"] + [f"synthetic {i + 1}" for i in range(N_IMAGES)]
            + ["synthetic 1 + its labels"], ncols=5, vrange=(0.0, 1.0),
            suptitle=f"2D generator: {size}x{size} crops of one axial slice, {args.voxel_size:g} mm, seed {args.seed}")
print(f"wrote {args.out / 'mosaic.png'}")

# ================================================================== a 2D U-Net, trained on the fly
# build_training_model chains the generator and the U-Net exactly as synthseg.training.synthetic does in
# 3D; a few neighbouring axial slices give the network some anatomical variety.
import keras  # noqa: E402

from synthseg.nn.losses import SegmentationLoss, WarmupCallback, hard_dice  # noqa: E402
from synthseg.nn.unet import UNetOptions  # noqa: E402
from synthseg.training.split_output import SplitOutputLoss
from synthseg.training.synthetic import build_training_model  # noqa: E402

unet_options = UNetOptions(ndim=2, n_levels=4, base_features=16)
model, unet, labels = build_training_model(options, unet_options, slice_labels.shape, seed=args.seed)
loss = SegmentationLoss(warmup_steps=min(50, args.steps // 3))
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=SplitOutputLoss(loss, len(labels)), jit_compile=False)
neighbours = np.stack([axial[min(max(z + d, 0), len(axial) - 1)] for d in range(-3, 4)])[..., None]


def batches(batch_size=4):
    rng = np.random.default_rng(args.seed)
    while True:
        yield neighbours[rng.integers(0, len(neighbours), batch_size)], np.zeros((batch_size, 1), np.float32)


# fresh synthetic slices (another seed) to score the network on, before and after training
test_gen = labels_to_image_model(options, slice_labels.shape, batch_size=4, seed=args.seed + 1000)
test_images, test_labels = (np.asarray(t) for t in test_gen.predict_on_batch(neighbours[[0, 2, 4, 6]]))
lut = np.asarray(labels, np.int32)
scored = [2, 3, 41, 42]  # cerebral white matter and cortex, left and right


def segment():
    return lut[np.argmax(np.asarray(unet.predict_on_batch(test_images)), axis=-1)]


def dice(pred):
    return float(np.mean([hard_dice(t[..., 0], p, scored).mean() for t, p in zip(test_labels, pred)]))


before = segment()
print(f"training a 2D U-Net ({unet.count_params():,} parameters) for {args.steps} steps ...", file=sys.stderr)
model.fit(batches(), steps_per_epoch=max(1, args.steps), epochs=1, verbose=0, shuffle=False,
          callbacks=[WarmupCallback(loss, loss.warmup_steps)])
after = segment()
dice_before, dice_after = dice(before), dice(after)
print(f"mean Dice of cerebral white matter and cortex on fresh synthetic slices: before training "
      f"{dice_before:.3f}, after {args.steps} steps {dice_after:.3f}")

rows = [test_images[i, ..., 0] for i in range(4)]
save_slices(rows * 3, args.out / "segmentation.png", labels=[t[..., 0] for t in test_labels] + list(before)
            + list(after), titles=[f"labels {i + 1}" for i in range(4)] + [f"U-Net, untrained {i + 1}" for i in range(4)]
            + [f"U-Net, {args.steps} steps {i + 1}" for i in range(4)], ncols=4, vrange=(0.0, 1.0),
            suptitle="2D U-Net on fresh synthetic slices")
summary = {"slice_index": z, "slice_shape": list(slice_labels.shape), "crop": [size, size],
           "images": list(images.shape), "steps": args.steps, "dice_before": dice_before, "dice_after": dice_after}
atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
print(f"wrote {args.out / 'segmentation.png'} and {args.out / 'summary.json'}")
