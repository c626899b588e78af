"""Training recipes: named, complete configurations of a synthetic training run.

One table, read by ``synthseg train --preset NAME``, ``scripts/train_synthseg.py --preset NAME``,
``benchmarks/training.py`` and ``scripts/ship_model.py``; the shipped model's recipe is
:data:`SHIPPED`. A recipe is plain data (importing this module starts no Keras backend, so a
script can choose the backend after reading it)::

    >>> from synthseg.training.recipes import recipe
    >>> r = recipe("small")
    >>> r.voxel_mm, r.crop, r.unet["n_levels"]
    (2.0, 64, 4)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab2im.errors import InputError

#: the repository (``init_weights`` paths are relative to it)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Recipe:
    """A training run's configuration.

    Attributes:
        name: the preset's name.
        summary: one line on what it is for.
        voxel_mm: voxel size of the training label maps (mm; the maps are resampled to it,
            nearest) and so of the model.
        crop: training crop, voxels per axis.
        unet: :class:`synthseg.nn.unet.UNetOptions` fields.
        training: :class:`synthseg.training.synthetic.TrainingOptions` fields.
        generator: :class:`lab2im.options.GeneratorOptions` fields that differ from
            :func:`synthseg.brain_options`' defaults.
        init_weights: U-Net weights (``.keras``) the run starts from, relative to the
            repository; ``None``: random initialisation.
        thin_csf_mm: the public training maps are used once per entry, with their CSF layer
            thinned by that many mm (:func:`synthseg.data.training_labels.thin_csf`; 0: as built).
        extra_maps: more whole-head label maps (paths relative to the repository, 1 mm, on the
            public maps' grid, e.g. :data:`synthseg.data.training_labels.COLIN27_MAP`), used
            once each beside the public maps, resampled to :attr:`voxel_mm`.
    """

    name: str
    summary: str
    voxel_mm: float
    crop: int
    unet: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    init_weights: str | None = None
    thin_csf_mm: tuple[float, ...] = (0.0,)
    extra_maps: tuple[str, ...] = ()

    def label_maps(self, cache_dir=None) -> list:
        """Paths of the training label maps this recipe trains on: the public maps (built and
        cached on first use) and :attr:`extra_maps`, all at :attr:`voxel_mm`."""
        from synthseg.data.training_labels import extra_label_map, training_label_maps

        public = [path for mm in self.thin_csf_mm
                  for path in sorted(training_label_maps(self.voxel_mm, cache_dir, thin_csf_mm=mm).glob("*.nii.gz"))]
        return public + [extra_label_map(REPO / path, self.voxel_mm, cache_dir) for path in self.extra_maps]

    def unet_options(self):
        from synthseg.nn.unet import UNetOptions

        return UNetOptions(**self.unet)

    def training_options(self, **overrides):
        """:class:`~synthseg.training.synthetic.TrainingOptions` of the recipe, with ``overrides``
        (``None`` values are ignored); ``init_weights`` resolved against the repository."""
        from synthseg.training.synthetic import TrainingOptions

        fields = dict(self.training)
        if self.init_weights:
            fields["init_weights"] = str(REPO / self.init_weights)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return TrainingOptions(**fields)

    def command(self, run_dir: str = "RUN_DIR") -> str:
        """The command that trains this recipe from a fresh clone."""
        return f"python scripts/train_synthseg.py {run_dir} --preset {self.name}"


#: what the cpu5 family shares: the 2 mm network, Dice + 0.5 voxel-wise cross-entropy from the
#: start, cosine decay, every checkpoint kept (learning curves, weight averaging)
_CPU_UNET = dict(n_levels=5, base_features=16)
#: cpu15's widening of it: 24 features at full resolution (5.9 M -> 13.2 M parameters)
_WIDE_UNET = dict(_CPU_UNET, base_features=24)
#: the third training anatomy from cpu11 on (a committed 1 mm map, see docs/data.md)
_COLIN27 = ("synthseg/data/maps/colin27.nii.gz",)
_CPU5_TRAINING = dict(steps_per_checkpoint=250, warmup_steps=0, ce_after_warmup=0.5, ce_weighting="uniform",
                      lr_schedule="cosine", keep_checkpoints=0)
#: the boundary moves cpu14 trained with: left and right share a rule, so a voxel between them
#: takes the right label (synthseg.data.labels.boundary_morphology_rules splits them)
_CPU14_MORPHOLOGY = [([3, 42], [24]), ([3, 42], [2, 41]), ([4, 43], [2, 41])]
#: cpu5b's milder degradation: half the samples at full resolution, a finer, smaller deformation
_CPU5B_GENERATOR = dict(resolution_prob=0.5, nonlin_scale=0.08, nonlin_std=3.0)
#: cpu16 and its frozen-batch-norm twin cpu17: the widened network from cpu15's averaged weights,
#: a 4,000-step cosine cycle from 1e-4 with a seed of its own (the same samples in both)
_CPU16 = dict(voxel_mm=1.5, crop=80, unet=_WIDE_UNET, init_weights="models/continue/cpu15_avg4_fp16.keras",
              generator=_CPU5B_GENERATOR, extra_maps=_COLIN27)
_CPU16_TRAINING = dict(_CPU5_TRAINING, steps=4_000, learning_rate=1e-4, seed=16)

RECIPES = {r.name: r for r in [
    Recipe("small", "visible progress on 2 CPU cores in minutes (docs/training.md has the measured curve)",
           voxel_mm=2.0, crop=64, unet=dict(n_levels=4, base_features=8),
           training=dict(steps=600, steps_per_checkpoint=50, learning_rate=1e-3, warmup_steps=50,
                         lr_schedule="constant")),
    Recipe("cpu", "the first shipped model (9,000 steps; its weights are in git history only, commit 24b9b54): 2 mm, 5-level U-Net, about two hours on 2 CPU cores",
           voxel_mm=2.0, crop=64, unet=dict(n_levels=5, base_features=16),
           training=dict(steps=10_000, steps_per_checkpoint=250, learning_rate=1e-3, warmup_steps=500,
                         lr_schedule="cosine")),
    Recipe("cpu2", "issue 12 (not shipped, docs/accuracy.md): the 'cpu' network continued from the shipped weights "
           "on maps with carved sulci and a random patchwork outside the brain, cross-entropy kept beside Dice",
           voxel_mm=2.0, crop=64, unet=dict(n_levels=5, base_features=16),
           # cpu2 started from the first shipped model (git show 24b9b54:models/synthseg_2mm/unet_last.keras),
           # which is no longer committed: this start is the later 2 mm model, so cpu2 is not reproduced exactly
           init_weights="models/continue/cpu5b_avg4_fp16.keras",
           training=dict(steps=20_000, steps_per_checkpoint=100, learning_rate=3e-4, warmup_steps=0,
                         ce_after_warmup=0.1, lr_schedule="constant")),
    Recipe("cpu3", "issue 12, the learning-rate test: cpu2's network and data (both maps, version 3) from its latest "
           "committed weights, warm restart to 1e-3 and cosine decay to 0, against cpu2's constant 3e-4",
           voxel_mm=2.0, crop=64, unet=dict(n_levels=5, base_features=16),
           init_weights="models/continue/cpu2_dk_csf3_step1300_fp16.keras",
           training=dict(steps=2_000, steps_per_checkpoint=100, learning_rate=1e-3, warmup_steps=0,
                         ce_after_warmup=0.1, lr_schedule="cosine", keep_checkpoints=0)),
    Recipe("cpu4", "issue 12, averaged weights: a second cosine cycle (peak 5e-4, 1,200 steps) from cpu3's last "
           "committed weights, every checkpoint kept so the last ones can be averaged (benchmarks/learning_curve.py --average)",
           voxel_mm=2.0, crop=64, unet=dict(n_levels=5, base_features=16),
           init_weights="models/continue/cpu3_step2000_fp16.keras",
           training=dict(steps=1_200, steps_per_checkpoint=100, learning_rate=5e-4, warmup_steps=0,
                         ce_after_warmup=0.1, lr_schedule="cosine", keep_checkpoints=0)),
    Recipe("cpu5", "issue 12, the loss test: cpu3's last committed weights, half soft Dice and half voxel-wise "
           "(uniform) cross-entropy as nnU-Net, so cortex and white matter weigh by their volume",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu3_step2000_fp16.keras",
           training=dict(_CPU5_TRAINING, steps=6_000, learning_rate=3e-4)),
    Recipe("cpu5b", "issue 12, the augmentation test: cpu5, with half the samples at full resolution and a "
           "finer, smaller nonlinear deformation (grid 0.08 x the crop, std up to 3 voxels)",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu3_step2000_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=6_000, learning_rate=3e-4)),
    Recipe("cpu5c", "issue 12, the partial-volume test: cpu5b from its step-1250 weights, every sample also "
           "blurred by U(0, 1) voxels per axis (SynthSeg blurs >= 0.5 voxel even at full resolution; without it "
           "the network never sees the partial-volume intensities of real 2 mm scans)",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu5b_step1250_fp16.keras",
           generator=dict(_CPU5B_GENERATOR, blur_sigma=1.0),
           training=dict(_CPU5_TRAINING, steps=4_750, learning_rate=2.8e-4)),
    # cpu6 and cpu7 started from that network in float32; its committed copy is float16
    Recipe("cpu6", "issue 12, the next step: cpu5b's settings continued from cpu5b's shipped 2 mm network (its learning curve "
           "was still rising, 0.52 -> 0.59 for the network alone over its last 3,000 steps), 10,000 steps",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu5b_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=10_000, learning_rate=2e-4, keep_checkpoints=8)),
    Recipe("cpu7", "issue 12, the CSF-layer test: cpu6, on the public maps as built and with their extra-cerebral "
           "CSF thinned by 1 and 2 mm (thin_csf: the skull moves in), so the layer's thickness must be read from the "
           "image instead of assumed",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu5b_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, thin_csf_mm=(0.0, 1.0, 2.0),
           training=dict(_CPU5_TRAINING, steps=10_000, learning_rate=2e-4, keep_checkpoints=8)),
    Recipe("cpu8", "issue 12, the resolution test: cpu6's averaged weights at 1.5 mm (80^3 crops, 120 mm, about "
           "the field of view of 64^3 at 2 mm); ground truth round-tripped through a 2 mm grid caps cortex Dice "
           "near 0.85 on a 1 mm subject, through 1.5 mm near 0.95",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu6_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=3_750, learning_rate=2e-4)),
    Recipe("cpu9", "issue 12, train it longer: cpu8's averaged weights, a second 1.5 mm cosine cycle from a lower "
           "peak (cpu8 was flat at 0.62 over its last 2,250 steps; a warm restart tests whether that was the "
           "schedule or the network)",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu8_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=1.2e-4)),
    Recipe("cpu10", "issue 12, train it longer still: cpu9's averaged weights, a third 1.5 mm cosine cycle from "
           "1e-4 (cpu9's warm restart gained 0.004 sharp-subject cortex Dice over cpu8 and left nothing outside "
           "the brain)",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu9_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=1e-4)),
    Recipe("cpu11", "issue 12, a third anatomy: cpu10's recipe and start (cpu9's averaged weights, 4,000 steps, "
           "cosine from 1e-4) on the two public maps and Colin27, a real single subject whose folding is its own "
           "(synthseg/data/maps/colin27.nii.gz: the shipped pipeline's segmentation of its 1 mm T1), against cpu10 "
           "at equal steps",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu9_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=1e-4),
           extra_maps=_COLIN27),
    Recipe("cpu12", "issue 12, continue the three-anatomy network: cpu11's averaged weights (it stopped at step "
           "3,250 of 4,000), another 1.5 mm cosine cycle from 8e-5 on the public maps and Colin27",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu11_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=8e-5),
           extra_maps=_COLIN27),
    Recipe("cpu13", "issue 12, continue the three-anatomy network further: cpu12's averaged weights (it stopped at "
           "step 3,000 of 4,000), another 1.5 mm cosine cycle from 6e-5 on the public maps and Colin27",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu12_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=6e-5),
           extra_maps=_COLIN27),
    Recipe("cpu14", "issue 12, anatomical variety from the same maps: cpu12 exactly (cpu11's averaged weights, "
           "cosine from 8e-5, the public maps and Colin27) with the boundaries of cortex/CSF, cortex/white matter "
           "and ventricles/white matter moved by one voxel in random smooth regions, against cpu12 at equal steps",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu11_avg4_fp16.keras",
           generator=dict(_CPU5B_GENERATOR, morphology_rules=_CPU14_MORPHOLOGY),
           training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=8e-5),
           extra_maps=_COLIN27),
    Recipe("cpu15", "issue 12, the capacity test: cpu12's averaged weights embedded in a U-Net with 24 features "
           "at full resolution instead of 16 (synthseg.nn.widen: the same function at step 0, 2.25x the "
           "parameters), a 1,750-step cosine cycle from 1e-4 (the peak of cpu10/cpu11's level restarts of the "
           "narrow network) on the public maps and Colin27",
           voxel_mm=1.5, crop=80, unet=_WIDE_UNET,
           init_weights="models/continue/cpu12_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR,
           training=dict(_CPU5_TRAINING, steps=1_750, learning_rate=1e-4, init_widen=True),
           extra_maps=_COLIN27),
    Recipe("cpu15n", "issue 12, the control of cpu15: the same start, schedule, maps and seed with the network "
           "left at 16 features (same samples at every step, so the two training logs compare step by step)",
           voxel_mm=1.5, crop=80, unet=_CPU_UNET, init_weights="models/continue/cpu12_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=1_750, learning_rate=1e-4),
           extra_maps=_COLIN27),
    Recipe("cpu16", "issue 12, continue the widened network: cpu15's averaged weights (its steps 1,000-1,750, "
           "ahead of its 16-feature control by 0.0019 training loss over steps 1,501-1,750), 24 features, a "
           "long 4,000-step cosine cycle from 1e-4 on the public maps and Colin27, with a new seed: its ancestors "
           "all replayed seed 0's first samples",
           **_CPU16, training=_CPU16_TRAINING),
    Recipe("cpu16b", "issue 12, cpu16 continued on a fresh machine: its step-1,250 weights (three-scan curve 0.656, "
           "the lineage's best; 0.620 / 0.638 / 0.649 at steps 500-1,000) and the rest of its cycle, a cosine over "
           "the remaining 2,750 steps from cpu16's rate at step 1,250 (7.78e-5; Adam's moments start again), with "
           "a seed of its own",
           **dict(_CPU16, init_weights="models/continue/cpu16_step1250_fp16.keras"),
           training=dict(_CPU16_TRAINING, steps=2_750, learning_rate=7.78e-5, seed=161)),
    Recipe("cpu16c", "issue 12, the rest of cpu16's cycle from the shipped network (cpu16's checkpoints "
           "1,750-2,500 averaged, shipped 2026-12-07): a cosine over the remaining 1,500 steps from cpu16's rate "
           "at step 2,500 (3.09e-5; Adam's moments start again), with a seed of its own. When that network is "
           "replaced in models/, it moves to models/continue/ (scripts/save_continue_weights.py) and this path "
           "with it",
           **dict(_CPU16, init_weights="models/synthseg_1.5mm/unet_last.keras"),
           training=dict(_CPU16_TRAINING, steps=1_500, learning_rate=3.09e-5, seed=162)),
    Recipe("cpu17", "issue 12, train what inference computes: cpu16 exactly (cpu15's averaged weights, the same "
           "samples) with every batch-norm layer frozen (freeze_batch_norm: moving statistics in training too; "
           "with batch size 1 the free layers normalise each crop by its own statistics, 0.09 of synthetic "
           "Dice that inference loses); measured: better on synthetic crops after 250 steps (+0.043 Dice), far "
           "worse on the development scans (0.278 against 0.635)",
           **_CPU16, training=dict(_CPU16_TRAINING, freeze_batch_norm=True)),
    Recipe("cpu18", "issue 12, the blur test: cpu16 exactly (the same start, schedule and seed) with more isotropically "
           "blurred samples (prob_isotropic 0.1 -> 0.4 of the degraded half, max_res_iso 4 -> 5 mm, blur up to "
           "2.5 voxels): cpu15's averaged weights lose 0.12 Dice on their own synthetic crops blurred by 2 voxels "
           "(benchmarks/normalisation_gap.py), and the development templates are that smooth; measured at step 500: "
           "+0.020 Dice on crops blurred by 2 voxels, +0.006 on the three-scan curve (noise), -0.016 refined "
           "cortex Dice on sharp 1 mm subjects (better on 1 of 6): not kept",
           **dict(_CPU16, generator=dict(_CPU5B_GENERATOR, prob_isotropic=0.4, max_res_iso=5.0)),
           training=_CPU16_TRAINING),
    Recipe("cpu20", "issue 12, the third anatomy at 2 mm: cpu5b's averaged weights (the 2 mm network shipped until "
           "2026-12-06, the best development mean of the lineage, 0.678) with Colin27 beside the public maps, a "
           "4,000-step cosine cycle from 1e-4 (as cpu11 added it at 1.5 mm), seed 20",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu5b_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=4_000, learning_rate=1e-4, seed=20),
           extra_maps=_COLIN27),
    Recipe("cpu20b", "issue 12, the rest of cpu20's cycle on a fresh machine: its checkpoints 1,500-2,250 averaged "
           "(development mean 0.677, level with cpu5b's 0.678), a cosine over the remaining 1,750 steps from cpu20's "
           "rate at step 2,250 (4.0e-5; Adam's moments start again), with a seed of its own",
           voxel_mm=2.0, crop=64, unet=_CPU_UNET, init_weights="models/continue/cpu20_avg4_fp16.keras",
           generator=_CPU5B_GENERATOR, training=dict(_CPU5_TRAINING, steps=1_750, learning_rate=4.0e-5, seed=201),
           extra_maps=_COLIN27),
    Recipe("synthseg", "the reference configuration (SynthSeg 1.0's network and crop), for a GPU",
           voxel_mm=1.0, crop=160, unet=dict(n_levels=5, base_features=24),
           training=dict(steps=300_000, steps_per_checkpoint=1000, learning_rate=1e-4, warmup_steps=1000,
                         lr_schedule="constant")),
]}
#: the recipe of the model shipped in ``models/synthseg_1.5mm``
SHIPPED = "cpu16"


def recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        InputError: no such recipe (the message lists them).
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise InputError(f"no training recipe named {name!r} (have {', '.join(RECIPES)})") from None
