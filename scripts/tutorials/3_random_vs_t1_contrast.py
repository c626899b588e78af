"""Tutorial 3: random contrast versus a constrained, T1-like contrast.

By default every structure class gets a mean intensity drawn from U(25, 225), whatever the
structure: images of any contrast, which is what makes a SynthSeg network contrast-agnostic.
To generate a given contrast instead, give each class its own prior. Here a T1-weighted look:
white matter brighter than grey matter brighter than CSF, dark skull, bright-ish scalp and
soft tissue, black background. The priors are ``(2, n_classes)`` arrays (rows: min, max of a
uniform prior; one column per class of ``synthseg.data.labels.tissue_classes()``) saved as
``.npy`` files and passed by path, as a training configuration would.

    python scripts/tutorials/3_random_vs_t1_contrast.py [--out DIR] [--size 160] [--seed 0]

Writes ``t1_prior_means.npy`` and ``t1_prior_stds.npy`` (the priors), ``mosaic.png`` (three
random-contrast and three T1-like images) and ``class_means.json`` (mean intensity of each
structure and of the WM / GM / CSF groups, measured in every image), and prints them.
"""
import json

import numpy as np
from _common import parse_args, save_mosaic, training_labels

args = parse_args("3_random_vs_t1_contrast", __doc__.split("\n\n")[0])
labels_dir = training_labels(args.voxel_size)
N_IMAGES = 3

from lab2im.io import atomic_write_text  # noqa: E402
from synthseg import BrainGenerator  # noqa: E402
from synthseg.data import labels as protocol  # noqa: E402

# ================================================================== T1-like priors
# One (min, max) range per class for the class mean, in intensity units before clipping to
# [0, 300] and normalising to [0, 1] (only the ratios matter after normalisation). Deep grey
# nuclei sit between cortex and white matter on T1, the pallidum and ventral DC (mostly
# white matter tracts) closest to white matter.
T1_MEANS = {
    "background": (0, 5),
    "third_ventricle": (20, 40), "fourth_ventricle": (20, 40), "csf": (20, 40),
    "lateral_ventricle": (20, 40), "inferior_lateral_ventricle": (20, 40),
    "skull": (5, 25),                 # cortical bone: almost no signal
    "head_soft_tissue": (90, 150),    # scalp fat is bright, muscle darker
    "cerebral_white_matter": (120, 140), "cerebellum_white_matter": (115, 135),
    "brainstem": (105, 125),
    "cerebral_cortex": (65, 85), "cerebellum_cortex": (65, 85),
    "hippocampus": (65, 80), "amygdala": (65, 80),
    "caudate": (75, 90), "accumbens": (75, 90), "putamen": (80, 95),
    "thalamus": (90, 105), "pallidum": (95, 110), "ventral_dc": (100, 115),
}
# The random parts of background, skull and soft tissue (synthseg.data.labels.EXTRA_CEREBRAL_PARTS):
# background and bone stay dark on T1; soft tissue ranges from muscle to fat.
PART_MEANS = {protocol.BACKGROUND: (0, 8), protocol.SKULL: (5, 35), protocol.SOFT_TISSUE: (40, 160)}
KEY_OF = {s.left: s.key for s in protocol.structures()}
T1_MEANS |= {KEY_OF[part]: PART_MEANS[parent]
             for parent, parts in protocol.EXTRA_CEREBRAL_PARTS.items() for part in parts}
# Narrow stds: tissue looks homogeneous (the default prior U(5, 25) is noisier).
T1_STDS = {name: (1, 5) for name in T1_MEANS} | {"background": (0, 3)}

names = protocol.tissue_class_names()  # name of each class, by class index
missing = sorted(set(names) - set(T1_MEANS))
assert not missing, f"T1_MEANS lacks the classes {missing}"
prior_means = np.array([T1_MEANS[name] for name in names], np.float32).T  # (2, n_classes)
prior_stds = np.array([T1_STDS[name] for name in names], np.float32).T
means_path, stds_path = args.out / "t1_prior_means.npy", args.out / "t1_prior_stds.npy"
np.save(means_path, prior_means)  # plain float arrays: read back with allow_pickle=False
np.save(stds_path, prior_stds)
print(f"wrote {means_path} and {stds_path}: shape {prior_means.shape} (min, max) x {len(names)} classes")

# ================================================================== two generators
# Same label maps, same seed (so the same deformations, bias fields, resolutions), and
# segmentation_labels=None keeps the skull and scalp labels in the output label maps, so we
# can measure their intensities too. Only the intensity priors differ.
common = dict(seed=args.seed, output_shape=(args.size,) * 3, segmentation_labels=None)
random_gen = BrainGenerator(labels_dir, **common)
t1_gen = BrainGenerator(labels_dir, prior_means=str(means_path), prior_stds=str(stds_path), **common)
random_images = [random_gen.generate_image() for _ in range(N_IMAGES)]
t1_images = [t1_gen.generate_image() for _ in range(N_IMAGES)]

# ================================================================== measure the contrast
classes = protocol.tissue_classes()  # generation label -> class
groups = protocol.tissue_groups()    # "WM" / "GM" / "CSF" -> segmentation labels


def measure(image, labels):
    """Mean intensity of each structure class and of each tissue group present."""
    structures = {}
    for c, name in enumerate(names):
        mask = np.isin(labels, [label for label, cls in classes.items() if cls == c])
        if mask.any():
            structures[name] = round(float(image[mask].mean()), 4)
    tissue = {group: round(float(image[np.isin(labels, ids)].mean()), 4)
              for group, ids in groups.items() if np.isin(labels, ids).any()}
    return {"groups": tissue, "structures": structures}


def t1_order(m):
    g = m["groups"]
    return all(k in g for k in ("WM", "GM", "CSF")) and g["WM"] > g["GM"] > g["CSF"]


def summary(m):
    g = m["groups"]
    return ", ".join(f"{k} {g[k]:.2f}" for k in ("WM", "GM", "CSF") if k in g)


random_means = [measure(image, labels) for image, labels in random_images]
t1_means = [measure(image, labels) for image, labels in t1_images]
result = {"size": args.size, "voxel_size_mm": args.voxel_size, "seed": args.seed,
          "prior_means_file": means_path.name, "prior_stds_file": stds_path.name,
          "random": random_means, "t1_like": t1_means,
          "t1_like_order_holds": [t1_order(m) for m in t1_means]}
atomic_write_text(args.out / "class_means.json", json.dumps(result, indent=2) + "\n")

print("\nmean intensity of each structure class in T1-like image 1 (image in [0, 1]; the bias field,\n"
      "the lower resolution (partial volume) and gamma move single structures around, the\n"
      "tissue-level ordering below is what the priors guarantee):")
first = t1_means[0]["structures"]
for name in sorted(first, key=first.get, reverse=True):
    lo, hi = T1_MEANS[name]
    print(f"  {name:<28s} {first[name]:.3f}   (prior mean U({lo}, {hi}))")
print("\nWM / GM / CSF means (WM > GM > CSF is the T1 ordering):")
for i, m in enumerate(random_means):
    print(f"  random contrast {i + 1}: {summary(m)}   T1 ordering: {t1_order(m)}")
for i, m in enumerate(t1_means):
    print(f"  T1-like {i + 1}:         {summary(m)}   T1 ordering: {t1_order(m)}")

# ================================================================== the figure
titles = [f"random contrast {i + 1} (means U(25, 225)): {summary(m)}" for i, m in enumerate(random_means)]
titles += [f"T1-like {i + 1} (priors from {means_path.name}): "
           + " > ".join(f"{k} {m['groups'][k]:.2f}" for k in ("WM", "GM", "CSF") if k in m["groups"])
           for i, m in enumerate(t1_means)]
path = save_mosaic([image for image, _ in random_images + t1_images], args.out / "mosaic.png",
                   titles=titles, suptitle=f"random vs T1-like contrast (seed {args.seed}; "
                                            "mean intensity per tissue in the titles)")
print(f"\nwrote {path} and {args.out / 'class_means.json'}")
