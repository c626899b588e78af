"""Tutorial 2: the generation parameters, one group at a time.

We start from a baseline with every augmentation off (no deformation, no flip, no bias
field, no resolution loss, no gamma, no noise): only the random Gaussian intensities remain,
since they are what turns labels into an image. Then we turn on one group of parameters at a
time and save one PNG per group, whose first row is always the baseline:

    1_deformation.png   affine (scaling, rotation, shearing) and nonlinear deformation
    2_gmm_priors.png    narrow and wide priors of the per-structure intensities
    3_bias_field.png    smooth multiplicative intensity inhomogeneity
    4_resolution.png    isotropic low resolution; thick slices along one axis
    5_gamma_noise.png   gamma transform and additive noise
    6_all_defaults.png  everything on, as in training (three successive images)

Every generator uses the same seed and the same label map. Each random layer draws its
parameters from its own seeded stream, so two images of one PNG differ only by the
parameters changed. Row titles give the settings (units: mm, voxels, degrees) and what the
generator actually drew for that image (read back from a twin of the layer with the same seed).

    python scripts/tutorials/2_generation_parameters.py [--out DIR] [--size 160] [--seed 0]
"""
import dataclasses

import numpy as np
from _common import parse_args, save_mosaic, training_labels

args = parse_args("2_generation_parameters", __doc__.split("\n\n")[0])
# One brain for every step, so that only the parameters change between images.
label_map = sorted(training_labels(args.voxel_size).glob("*.nii.gz"))[0]

from synthseg import BrainGenerator, brain_options  # noqa: E402
from synthseg.data import labels as protocol  # noqa: E402

# ================================================================== the baseline: all off
# brain_options() gives the SynthSeg defaults for our label protocol (label lists, left/right
# pairs, tissue classes); every field of lab2im.options.GeneratorOptions can be overridden.
baseline = brain_options(
    output_shape=(args.size,) * 3,  # random crop of the (padded) label map, voxels
    voxel_size=args.voxel_size,     # voxel size of the label maps, mm (used by the resolution step)
    # spatial deformation off: affine factors U(1 -/+ scaling), angles U(-/+ rotation) degrees,
    # shears U(-/+ shearing), shifts U(-/+ translation) voxels; nonlinear field std U(0, nonlin_std) voxels
    scaling=0.0, rotation=0.0, shearing=0.0, translation=0.0, nonlin_std=0.0,
    flip_prob=0.0,                  # probability of a left/right flip (swapping left/right labels)
    bias_std=0.0,                   # bias field off
    randomise_resolution=False,     # no simulated acquisition resolution / slice thickness
    blur_sigma=0.0,                 # no extra blur
    noise_std=0.0,                  # no additive noise
    gamma_std=0.0,                  # no gamma transform
    # kept: GMM priors, means U(25, 225) and stds U(5, 25) per structure (intensity units
    # before normalisation), and clip=(0, 300) followed by min-max normalisation to [0, 1].
)
print(f"label map: {label_map}\noutput: {args.size}^3 voxels of {args.voxel_size:g} mm, seed {args.seed}")


def generate(options):
    """The first image of a generator with these options (and the generator)."""
    gen = BrainGenerator(label_map, options=options, seed=args.seed)
    return gen.generate_image()[0], gen


def first_draw(gen, stage):
    """What layer ``stage`` of the model drew for the generator's first image.

    Every random layer separates drawing parameters (``get_random_transformation``) from
    applying them, and a twin built from the layer's config (same settings, same seed) draws
    the same parameters.
    """
    layer = gen.model.get_layer(stage)
    twin = type(layer).from_config(layer.get_config())
    twin.build(layer.input.shape)
    return twin, {k: np.asarray(v)[0] for k, v in twin.get_random_transformation(1).items()}


def save_step(name, rows, what):
    """Save one PNG: the baseline, then each ``(title, image)`` row."""
    path = save_mosaic([base_image] + [image for _, image in rows], args.out / name,
                       titles=[BASE_TITLE] + [title for title, _ in rows],
                       suptitle=f"{what} (same seed {args.seed}, same label map)")
    print(f"wrote {path}")
    for title, _ in rows:
        print(f"    {title}")


BASE_TITLE = ("baseline: everything off but the per-structure Gaussian intensities\n"
              "(default priors: means U(25, 225), stds U(5, 25))")
base_image, base_gen = generate(baseline)

# ================================================================== 1. spatial deformation
# Affine part: per axis, a scaling factor U(1 - 0.2, 1 + 0.2), a rotation angle U(-15, 15)
# degrees, shears U(-0.012, 0.012) (and shifts U(-translation, translation) voxels, 0 here:
# the random crop already moves the field of view). Nonlinear part: a smooth stationary
# velocity field, std U(0, nonlin_std) voxels, sampled on a grid nonlin_scale x the output
# shape (0.04 x 160 = 7 points per axis) and integrated into a diffeomorphism (no folding).
# Label maps are resampled nearest neighbour, so the labels stay exact.
affine_only = dataclasses.replace(baseline, scaling=0.2, rotation=15.0, shearing=0.012)
nonlin_only = dataclasses.replace(baseline, nonlin_std=4.0, nonlin_scale=0.04)
nonlin_strong = dataclasses.replace(baseline, nonlin_std=20.0, nonlin_scale=0.04)  # to see it
both = dataclasses.replace(affine_only, nonlin_std=4.0, nonlin_scale=0.04)


def describe_deformation(gen):
    twin, t = first_draw(gen, "deformation")
    linear = t["affine"][:, :3]
    u, scales, vt = np.linalg.svd(linear)  # linear = rotation-ish x stretch: angle and factors
    rotation = u @ vt
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    parts = []
    if gen.options.rotation or gen.options.scaling or gen.options.shearing:
        parts.append(f"net rotation {angle:.1f}\u00b0 (3 axes combined), scale factors {scales.min():.2f} to {scales.max():.2f}")
    disp = twin.displacement(t["velocity"][None])
    if disp is not None:
        parts.append(f"displacements up to {np.abs(np.asarray(disp)).max():.1f} voxels")
    return "drew " + ", ".join(parts)


rows = []
for title, options in (("affine only: scaling 0.2, rotation 15\u00b0, shearing 0.012", affine_only),
                       ("nonlinear only: nonlin_std 4 voxels, nonlin_scale 0.04", nonlin_only),
                       ("nonlinear only, exaggerated: nonlin_std 20 voxels", nonlin_strong),
                       ("affine + nonlinear (the defaults)", both)):
    image, gen = generate(options)
    rows.append((f"{title}\n{describe_deformation(gen)}", image))
save_step("1_deformation.png", rows, "spatial deformation")

# ================================================================== 2. GMM priors
# Each structure class (left and right share one) gets a Gaussian intensity N(mean, std)
# per image; mean and std are drawn from uniform priors (min, max), in intensity units
# before clipping to [0, 300] and min-max normalisation to [0, 1]. The baseline has the
# defaults, means U(25, 225) and stds U(5, 25): any contrast, the point of SynthSeg. What
# the eye sees is the spread of the means relative to the stds (normalisation removes the
# overall scale): narrow mean priors drown the structures in their own noise, narrow std
# priors give flat, cartoon-like tissue, wide ones a noisy texture. Priors can also be one
# (min, max) per class: see tutorial 3.
gmm_rows = (("narrow mean prior: means U(115, 135), stds U(5, 25)", dict(prior_means=(115.0, 135.0))),
            ("narrow std prior: means U(25, 225), stds U(0, 2)", dict(prior_stds=(0.0, 2.0))),
            ("wide std prior: means U(25, 225), stds U(25, 50)", dict(prior_stds=(25.0, 50.0))))
lookup = {label: i for i, label in enumerate(base_gen.options.generation_labels)}


def describe_gmm(gen):
    _, t = first_draw(gen, "gmm")
    means, stds = t["means"][:, 0], t["stds"][:, 0]  # per generation label
    parts = [f"{name} {means[lookup[label]]:.0f}\u00b1{stds[lookup[label]]:.0f}"
             for name, label in (("WM", 2), ("GM", 3), ("CSF", protocol.CSF))]
    return "drew " + ", ".join(parts)


rows = []
for title, changes in gmm_rows:
    image, gen = generate(dataclasses.replace(baseline, **changes))
    rows.append((f"{title}\n{describe_gmm(gen)}", image))
save_step("2_gmm_priors.png", rows, "intensity priors (Gaussian mixture)")

# ================================================================== 3. bias field
# A smooth multiplicative field exp(f): f is Gaussian noise with std U(0, bias_std) (log
# intensity units) on a coarse grid of bias_scale x the output shape (0.025 x 160 = 4 points
# per axis), upsampled linearly. bias_prob is the probability of applying it (1 here so
# that every row has one; 0.95 by default). A larger bias_scale gives a less smooth field.
bias_rows = (("bias_std 0.3, bias_scale 0.025", dict(bias_std=0.3, bias_scale=0.025)),
             ("bias_std 0.7, bias_scale 0.025 (the defaults)", dict(bias_std=0.7, bias_scale=0.025)),
             ("bias_std 0.7, bias_scale 0.1 (a finer field)", dict(bias_std=0.7, bias_scale=0.1)))
rows = []
for title, changes in bias_rows:
    image, gen = generate(dataclasses.replace(baseline, bias_prob=1.0, **changes))
    twin, t = first_draw(gen, "bias_field")
    field = np.asarray(twin.field({"log_field": t["log_field"][None]}))
    rows.append((f"{title}\ndrew a field of x{field.min():.2f} to x{field.max():.2f}", image))
save_step("3_bias_field.png", rows, "bias field")

# ================================================================== 4. resolution
# Simulates a scan acquired at a lower resolution and resampled to the label maps' grid:
# with probability prob_isotropic, all axes get one resolution U(voxel, max_res_iso) mm;
# otherwise one random axis gets U(voxel, max_res_aniso) mm (thick slices) and the others
# stay at the voxel size. The slice thickness is drawn from U(voxel, resolution) mm, and
# the image is blurred (sigma 0.75 x thickness / voxel) and sampled at that resolution.
# (blur_sigma > 0 would add a further random Gaussian blur, U(0, blur_sigma) voxels.)
iso_max = max(4.0, args.voxel_size)
aniso_max = max(8.0, 2 * args.voxel_size)
isotropic = dataclasses.replace(baseline, randomise_resolution=True, prob_isotropic=1.0,
                                max_res_iso=iso_max)
thick = dataclasses.replace(baseline, randomise_resolution=True, prob_isotropic=0.0,
                            max_res_aniso=aniso_max)
AXES = ("x (thick sagittal slices)", "y (thick coronal slices)", "z (thick axial slices)")


def describe_resolution(gen):
    _, t = first_draw(gen, "resolution")
    res = t["factor"] * args.voxel_size
    text = " x ".join(f"{r:.1f}" for r in res) + " mm"
    if res.max() > res.min() + 1e-3:
        text += f" along {AXES[int(np.argmax(res))]}"
    return f"drew {text}"


rows = []
for title, options in ((f"isotropic: prob_isotropic 1, max_res_iso {iso_max:g} mm", isotropic),
                       (f"thick slices: prob_isotropic 0, max_res_aniso {aniso_max:g} mm", thick)):
    image, gen = generate(options)
    rows.append((f"{title}\n{describe_resolution(gen)}", image))
save_step("4_resolution.png", rows, "resolution and slice thickness")

# ================================================================== 5. gamma and noise
# After the other steps, intensities are clipped to clip=(0, 300), min-max normalised to
# [0, 1] and raised to the power exp(g), g ~ N(0, gamma_std): a random non-linear contrast
# change (< 1 brightens, > 1 darkens). noise_std adds Gaussian noise, std U(0, noise_std)
# in intensity units before normalisation (the GMM means are in 25-225).
gamma = dataclasses.replace(baseline, gamma_std=0.5)
noise = dataclasses.replace(baseline, noise_std=20.0)


def describe_intensity(gen):
    _, t = first_draw(gen, "intensity")
    parts = []
    if gen.options.gamma_std > 0:
        parts.append(f"exponent {float(t['gamma'].ravel()[0]):.2f}")
    if "noise" in t:
        parts.append(f"noise std {float(t['noise'].std()):.1f}")
    return "drew " + ", ".join(parts)


rows = []
for title, options in (("gamma_std 0.5 (the default): x ** exp(N(0, 0.5))", gamma),
                       ("noise_std 20: Gaussian noise, std U(0, 20)", noise),
                       ("both", dataclasses.replace(gamma, noise_std=20.0))):
    image, gen = generate(options)
    rows.append((f"{title}\n{describe_intensity(gen)}", image))
save_step("5_gamma_noise.png", rows, "gamma and noise")

# ================================================================== 6. everything on
# brain_options() defaults (also what BrainGenerator uses without options): deformation,
# left/right flip with probability 0.5, wide priors, bias field, random resolution, gamma.
defaults = brain_options(output_shape=(args.size,) * 3, voxel_size=args.voxel_size,
                         max_res_iso=iso_max, max_res_aniso=aniso_max)
gen = BrainGenerator(label_map, options=defaults, seed=args.seed)
images = [gen.generate_image()[0] for _ in range(3)]
path = save_mosaic(images, args.out / "6_all_defaults.png",
                   titles=[f"all defaults, image {i + 1} of one generator" for i in range(3)],
                   suptitle=f"everything on, as in training (seed {args.seed})")
print(f"wrote {path}")
