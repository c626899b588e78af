"""Wall time and peak memory of ``synthseg.inference`` on one 1 mm head scan, end to end, on the CPU.

    python benchmarks/predict.py [--threads 2] [--tile 112] [--scans 2] [--backend jax] [--quick]
    python benchmarks/predict.py --trained shipped     # the model shipped in models/ instead

The scan is MNI ICBM 2009c's 1 mm T1 (193 x 229 x 193, ``synthseg fetch mni2009c_1mm_t1``; a
synthetic head of that shape when it cannot be fetched); the network is the SynthSeg-size U-Net
(``UNetOptions()`` defaults, 33 labels) with random weights: the work done does not depend on
the weights (``--trained``: a trained model instead, e.g. the shipped one, which may use another
voxel size). Each configuration (flip averaging on / off) runs in a fresh Python process that
imports the libraries, loads the model and segments ``--scans`` copies of the scan in one batch,
so the peak resident memory (``getrusage``) is that of one prediction run, and both the first
scan (graph tracing included) and the following ones are timed. ``--quick``: a 48 x 56 x 40
synthetic scan and a tiny U-Net (for the test suite).

Writes ``benchmarks/results/predict[_<backend>].json`` (``predict_quick.json`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    error_reason,
    format_table,
    load_average,
    select_keras_backend,
    write_results,
)

FULL_SHAPE = (193, 229, 193)
QUICK_SHAPE = (48, 56, 40)


# ----------------------------------------------------------------------------- set-up (parent)
def make_model(folder: Path, quick: bool) -> dict:
    """A run folder with a randomly initialised U-Net for the 33 protocol labels."""
    import keras
    import numpy as np

    from lab2im.options import GeneratorOptions
    from synthseg.data import labels as protocol
    from synthseg.nn.unet import UNetOptions, build_unet
    from synthseg.training.synthetic import TrainingOptions, save_options

    unet = UNetOptions(n_levels=2, base_features=4) if quick else UNetOptions()
    labels = protocol.segmentation_labels()
    keras.utils.set_random_seed(0)
    net = build_unet(len(labels), 1, unet)
    net.save(folder / "unet_last.keras")
    np.save(folder / "labels.npy", labels)
    pairs = [p for p in protocol.lr_pairs() if p[0] in labels and p[1] in labels]
    save_options(folder, GeneratorOptions(generation_labels=labels.tolist(), lr_pairs=pairs), unet,
                 TrainingOptions())
    return {"unet": unet.to_dict(), "unet_parameters": int(net.count_params()), "n_labels": int(len(labels))}


def trained_model(which: str) -> tuple[Path, dict]:
    """A trained model to time: ``"shipped"`` (models/) or a path; its size and labels."""
    from synthseg.inference.model import default_model_path, load_model

    path = default_model_path() if which == "shipped" else Path(which)
    model = load_model(path)
    return path, {"model": str(model.path), "unet_parameters": int(model.network.count_params()),
                  "n_labels": int(model.labels.size), "model_voxel_mm": model.voxel_size.tolist()}


def make_scan(path: Path, quick: bool) -> dict:
    """The scan to segment: MNI 2009c 1 mm T1 (or a synthetic head of its shape), or a small one."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    if not quick:
        try:
            from synthseg.data import datasets

            src = datasets.fetch("mni2009c_1mm_t1")
            shutil.copyfile(src, path)
            return {"scan": "mni2009c_1mm_t1", "shape": list(nib.load(str(path)).shape)}
        except Exception as exc:  # offline: a synthetic head of the same shape
            print(f"mni2009c_1mm_t1 unavailable ({error_reason(exc)}); using a synthetic scan", file=sys.stderr)
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = (grid ** 2).sum(0) < 0.8
    image = np.where(head, 60 + 40 * ndimage.gaussian_filter(rng.random(shape), 3), 0)
    image = (image + rng.normal(0, 2, shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return {"scan": "synthetic", "shape": list(shape)}


def run_config(model_dir: Path, scans_dir: Path, work: Path, flip: bool, args) -> dict:
    """One prediction run in a fresh process; its measurements."""
    result = work / f"result_{'flip' if flip else 'noflip'}.json"
    out = work / f"out_{'flip' if flip else 'noflip'}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(model_dir), "--inputs",
           str(scans_dir), "--outputs", str(out), "--result", str(result), "--tile", str(args.tile),
           "--flip" if flip else "--no-flip"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    load_before = load_average()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"flip": flip, "status": f"timeout after {args.timeout} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"flip": flip, "status": f"error (exit {proc.returncode}): {' | '.join(tail)}"[:600]}
    data = json.loads(result.read_text())
    data.update(flip=flip, wall_s=wall, load_average_before=load_before, load_average_after=load_average())
    return data


def cleanup_on_a_real_label_map() -> dict | None:
    """Seconds of :func:`synthseg.inference.postprocessing.clean_posteriors` on realistic posteriors: a real brain
    label map (the cached training label maps), one-hot, blurred (sigma 1 voxel) and made noisy
    so that about 2 % of the voxels change label. (A network with random weights labels voxels
    almost at random, which makes the clean-up much slower than on a trained network's output.)"""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from synthseg.data import labels as protocol
    from synthseg.data.datasets import cache_root
    from synthseg.inference.postprocessing import clean_posteriors

    files = sorted((cache_root() / "training_labels").glob("*.nii.gz"))
    if not files:
        return None
    labels = protocol.segmentation_labels()
    data = np.asarray(nib.load(str(files[0])).dataobj)
    lut = np.zeros(int(max(data.max(), labels.max())) + 1, np.int64)
    lut[labels] = np.arange(labels.size)
    channels = lut[data]
    rng = np.random.default_rng(0)
    post = np.empty(data.shape + (labels.size,), np.float32)
    for c in range(labels.size):
        post[..., c] = 4 * ndimage.gaussian_filter((channels == c).astype(np.float32), 1.0)
        post[..., c] += rng.normal(0, 0.6, data.shape).astype(np.float32)
    post -= post.max(-1, keepdims=True)
    np.exp(post, out=post)
    post /= post.sum(-1, keepdims=True)
    noisy = float(np.mean(np.argmax(post, -1) != channels))
    t0 = time.perf_counter()
    clean_posteriors(post, background=0)
    return {"label_map": files[0].name, "shape": list(data.shape), "noisy_voxels": noisy,
            "cleanup_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- one run (child)
def worker(args) -> int:
    t0 = time.perf_counter()
    import numpy as np

    import synthseg.inference as P

    warning = P.set_threads(args.threads)
    import keras

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = P.load_model(args.model)
    t_load = time.perf_counter() - t1
    network_s = [0.0]
    predict_batch = model._predict

    def timed(batch):  # time spent in the network (tiles, flipped tiles)
        t = time.perf_counter()
        out = predict_batch(batch)
        network_s[0] += time.perf_counter() - t
        return out

    model._predict = timed
    cleanup_s = [0.0]
    clean = P.clean_posteriors

    def timed_clean(*a, **k):  # post-processing: costlier for random weights' noisy labels
        t = time.perf_counter()
        out = clean(*a, **k)
        cleanup_s[0] += time.perf_counter() - t
        return out

    P.clean_posteriors = timed_clean
    t2 = time.perf_counter()
    report = P.predict(args.inputs, args.outputs, model, flip=args.flip, tile_size=args.tile or None,
                       progress=False)
    t_predict = time.perf_counter() - t2
    per_scan = [report.seconds[f] for f in report.done]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    image = P.read_scan(report.done[0])[0] if report.done else None
    out = {"status": "ok" if report.ok else f"error: {report.failed[0][1]}",
           "backend": keras.backend.backend(), "threads": args.threads, "threads_warning": warning,
           "tile": args.tile, "import_s": t_import, "load_model_s": t_load, "predict_s": t_predict,
           "per_scan_s": per_scan, "first_scan_s": per_scan[0] if per_scan else None,
           "next_scan_s": float(np.median(per_scan[1:])) if len(per_scan) > 1 else None,
           "network_s": network_s[0], "cleanup_s": cleanup_s[0], "peak_rss_mib": peak_mib,
           "shape": list(image.shape) if image is not None else None}
    Path(args.result).write_text(json.dumps(out))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scan and tiny U-Net (smoke test)")
    parser.add_argument("--backend", default=None, help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    parser.add_argument("--threads", type=int, default=2, help="backend CPU threads (default: 2; 0: backend default)")
    parser.add_argument("--tile", type=int, default=None, help="network tile size (default: predict's; 0: whole scan)")
    parser.add_argument("--scans", type=int, default=2, help="copies of the scan per run (default: 2)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run (default: 1800)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--trained", default=None, metavar="MODEL",
                        help="time a trained model (a run folder, a .keras file, or 'shipped' for the model in "
                             "models/) instead of the SynthSeg-size U-Net with random weights")
    # the child process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    backend = select_keras_backend(args.backend)
    args.threads = args.threads or None
    if args.worker:
        return worker(args)

    from synthseg.inference.tiling import DEFAULT_TILE

    args.tile = DEFAULT_TILE if args.tile is None else args.tile
    suffix = ("" if backend == "tensorflow" else "_" + backend) + ("_trained" if args.trained else "")
    out_path = args.out or RESULTS_DIR / ("predict_quick.json" if args.quick else f"predict{suffix}.json")
    with tempfile.TemporaryDirectory(prefix="synthseg-bench-predict-") as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        (work / "scans").mkdir()
        if args.trained:
            model_dir, model_info = trained_model(args.trained)
        else:
            model_dir, model_info = work / "model", make_model(work / "model", args.quick)
        scan_info = make_scan(work / "scans" / "scan_0.nii.gz", args.quick)
        for i in range(1, args.scans):
            shutil.copyfile(work / "scans" / "scan_0.nii.gz", work / "scans" / f"scan_{i}.nii.gz")
        results = [run_config(model_dir, work / "scans", work, flip, args) for flip in (True, False)]
    real_cleanup = None if args.quick else cleanup_on_a_real_label_map()

    headers = ["flip", "status", "first scan s", "next scan s", "network s/scan", "clean-up s/scan",
               "process wall s", "peak RSS GiB"]
    n = max(args.scans, 1)
    rows = [[r["flip"], r["status"][:40], r.get("first_scan_s"), r.get("next_scan_s"),
             None if r.get("network_s") is None else r["network_s"] / n,
             None if r.get("cleanup_s") is None else r["cleanup_s"] / n, r.get("wall_s"),
             None if r.get("peak_rss_mib") is None else r["peak_rss_mib"] / 1024] for r in results]
    print(f"prediction, {scan_info['scan']} {tuple(scan_info['shape'])}, U-Net {model_info['unet_parameters']:,} "
          f"parameters, {backend}, threads {args.threads}, tile {args.tile}, {args.scans} scan(s) per process")
    print(format_table(headers, rows))
    if real_cleanup:
        print(f"clean-up on realistic posteriors ({real_cleanup['label_map']}, {tuple(real_cleanup['shape'])}, "
              f"{100 * real_cleanup['noisy_voxels']:.1f} % noisy voxels): {real_cleanup['cleanup_s']:.1f} s")
    settings = {"quick": args.quick, "backend": backend, "threads": args.threads, "tile": args.tile,
                "scans_per_run": args.scans, **scan_info, **model_info}
    path = write_results(out_path, "predict", settings, results,
                         packages=["keras", "tensorflow", "jax", "numpy", "scipy", "nibabel"],
                         cleanup_on_real_labels=real_cleanup)
    print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
