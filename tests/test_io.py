import os
import stat

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.io import Volume, list_volume_files, load_volume, save_volume


def oblique_affine():
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.2, 3.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mgz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_save_load_round_trip(tmp_path, suffix, dtype):
    data = (np.random.default_rng(0).random((5, 6, 7)) * 100).astype(dtype)
    path = save_volume(Volume(data, oblique_affine()), tmp_path / f"vol{suffix}")
    loaded = load_volume(path)
    assert loaded.data.dtype == dtype and loaded.data.dtype.isnative
    assert np.array_equal(loaded.data, data)
    np.testing.assert_allclose(loaded.affine, oblique_affine(), atol=1e-4)
    assert loaded.path == str(path)


def test_save_load_4d_and_header_copy(tmp_path):
    data = np.random.default_rng(1).random((4, 5, 6, 3)).astype(np.float32)
    first = load_volume(save_volume(data, tmp_path / "a.nii.gz", affine=oblique_affine()))
    # saving with another volume's header must not carry over its (float) dtype
    labels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    second = load_volume(save_volume(Volume(labels, first.affine, first.header), tmp_path / "b.nii.gz"))
    assert first.shape == (4, 5, 6, 3) and np.array_equal(first.data, data)
    assert second.data.dtype == np.int16 and np.array_equal(second.data, labels)


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    save_volume(np.zeros((3, 3, 3), dtype=np.uint8), tmp_path / "out.nii.gz")
    save_volume(np.ones((3, 3, 3), dtype=np.uint8), tmp_path / "out.nii.gz")  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["out.nii.gz"]
    assert load_volume(tmp_path / "out.nii.gz").data.sum() == 27


def test_interrupted_save_keeps_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = save_volume(np.zeros((3, 3, 3), dtype=np.uint8), tmp_path / "out.nii.gz")

    def half_write_then_fail(img, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_volume(np.ones((3, 3, 3), dtype=np.uint8), target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out.nii.gz"]
    assert load_volume(target).data.sum() == 0


def assert_input_error(path, match, call=load_volume):
    with pytest.raises(InputError, match=match) as info:
        call(path)
    assert str(path) in str(info.value)


def test_load_errors_name_the_path(tmp_path):
    assert_input_error(tmp_path / "missing.nii.gz", "no such file")
    assert_input_error(tmp_path, "directory")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert_input_error(tmp_path / "empty.nii.gz", "empty")
    (tmp_path / "notes.nii.gz").write_text("this is not an image\n")
    assert_input_error(tmp_path / "notes.nii.gz", "not a readable|truncated or corrupt")
    (tmp_path / "unknown.png").write_bytes(b"\x89PNG....")
    assert_input_error(tmp_path / "unknown.png", "not a readable")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mgz"])
def test_load_truncated_file(tmp_path, suffix):
    path = save_volume(np.random.default_rng(2).random((20, 20, 20)).astype(np.float32), tmp_path / f"t{suffix}")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    assert_input_error(path, "truncated or corrupt|not a readable")


def test_save_errors(tmp_path):
    data = np.zeros((2, 2, 2), dtype=np.uint8)
    assert_input_error(tmp_path / "out.png", "unknown output format", lambda p: save_volume(data, p))
    missing = tmp_path / "no_such_folder"
    assert_input_error(missing, "does not exist", lambda p: save_volume(data, p / "out.nii.gz"))
    assert not missing.exists()


def test_save_into_unwritable_folder(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(folder, os.W_OK):  # root ignores folder modes: deny writing the way a user would see it
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(folder) else real(p, mode))
    try:
        assert_input_error(folder, "not writable", lambda p: save_volume(np.zeros((2, 2, 2)), p / "out.nii"))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)


def test_singular_affine_is_rejected(tmp_path):
    path = tmp_path / "flat.nii"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), None)
    img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(img, path)
    assert_input_error(path, "affine")


def test_list_volume_files(tmp_path):
    for name in ("b.nii.gz", "a.mgz", "c.nii", "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.nii.gz").mkdir()
    assert [p.name for p in list_volume_files(tmp_path)] == ["a.mgz", "b.nii.gz", "c.nii"]
    assert list_volume_files(tmp_path / "c.nii") == [tmp_path / "c.nii"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"c.nii\n\n{tmp_path / 'a.mgz'}\n")
    assert list_volume_files(listing) == [tmp_path / "c.nii", tmp_path / "a.mgz"]
    listing.write_text("c.nii\nmissing.nii\n")
    with pytest.raises(InputError, match="missing.nii"):
        list_volume_files(listing)
    listing.write_text("\n")
    assert_input_error(listing, "names no", list_volume_files)

    assert [p.name for p in list_volume_files([tmp_path / "a.mgz"])] == ["a.mgz"]
    with pytest.raises(InputError, match="empty list"):
        list_volume_files([])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_input_error(empty, "contains no label map", lambda p: list_volume_files(p, what="label map"))
    assert_input_error(tmp_path / "nowhere", "no such file", list_volume_files)
