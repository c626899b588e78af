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


# ----------------------------------------------------------------------------- limits and outputs (issue 7)
def test_voxel_limit_is_checked_from_the_header_before_reading(tmp_path, monkeypatch):
    import lab2im.io as io

    path = save_volume(np.zeros((10, 10, 10, 3), np.float32), tmp_path / "dwi.nii.gz")
    assert_input_error(path, r"too large: its header describes 3,000 voxels .* limit of 2,999",
                       lambda p: load_volume(p, max_voxels=2999))
    monkeypatch.setenv("LAB2IM_MAX_VOXELS", "2999")
    assert io.max_voxels_limit() == 2999
    assert_input_error(path, "set LAB2IM_MAX_VOXELS to raise it")
    # the first volume only: 1,000 voxels read, the rest never
    first = load_volume(path, first_volume=True)
    assert first.data.shape == (10, 10, 10) and first.header.get_data_shape() == (10, 10, 10, 3)
    monkeypatch.setenv("LAB2IM_MAX_VOXELS", "lots")
    with pytest.raises(InputError, match="LAB2IM_MAX_VOXELS must be a number"):
        load_volume(path)
    monkeypatch.delenv("LAB2IM_MAX_VOXELS")
    assert io.max_voxels_limit() == io.MAX_VOXELS == 2 ** 28


def test_first_volume_of_a_4d_file_is_its_first_volume(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6, 2, 3)).astype(np.float32)
    for suffix in (".nii.gz", ".nii", ".mgz"):
        if suffix == ".mgz":
            data = data[..., 0]  # MGZ holds 4D at most
        path = save_volume(data, tmp_path / f"v{suffix}")
        got = load_volume(path, first_volume=True).data
        np.testing.assert_array_equal(got, data.reshape(data.shape[:3] + (-1,))[..., 0])


def test_check_image_and_dimension_problem():
    from lab2im.io import check_image, dimension_problem

    assert dimension_problem((4, 5, 6)) is None and dimension_problem((4, 5, 6, 2)) is None
    assert dimension_problem((1, 1, 1)) == "image is a single voxel (shape (1, 1, 1)); expected a 3D volume"
    assert dimension_problem((4, 5), "label map") == "label map is 2D (shape (4, 5)); expected a 3D volume"
    assert dimension_problem((4, 1, 6)).startswith("image is 2D")
    assert dimension_problem((1, 1, 6)).startswith("image is 1D")
    with pytest.raises(InputError, match="x.nii: image is too small"):
        check_image(np.ones((4, 5, 6)), "x.nii", min_voxels=5)
    with pytest.raises(InputError, match="image has 1 NaN or infinite voxel"):
        check_image(np.r_[np.ones(7), np.nan].reshape(2, 2, 2))
    with pytest.raises(InputError, match=r"image is empty \(every voxel is 3\)"):
        check_image(np.full((2, 2, 2), 3.0))
    check_image(np.arange(8.0).reshape(2, 2, 2, 1))


def test_output_checks(tmp_path):
    from lab2im.io import check_folder_writable, check_not_an_input

    (tmp_path / "file").write_text("x")
    check_folder_writable(tmp_path / "new" / "deeper")  # can be created: nothing is created
    assert not (tmp_path / "new").exists()
    assert_input_error(tmp_path / "file" / "out", "cannot be created", check_folder_writable)
    with pytest.raises(InputError, match="run folder is an input"):
        check_not_an_input(tmp_path / "a" / ".." / "file", [[tmp_path / "b"], tmp_path / "file"], "run folder")
    check_not_an_input(tmp_path / "out", [tmp_path / "file", None, 3])


def test_a_failed_write_is_an_output_error_and_stale_temporaries_can_be_removed(tmp_path, monkeypatch):
    import errno

    from lab2im.errors import OutputError
    from lab2im.io import atomic_output, atomic_write_text, remove_stale_temporaries

    target = atomic_write_text(tmp_path / "table.csv", "old\n")
    with pytest.raises(OutputError, match=r"table.csv: cannot write \(No space left on device\)") as info:
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, InputError)
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["table.csv"]
    # what kill -9 leaves: temporaries of this file are removed, others' are not
    for name in (".table.csv.k1ll3d.tmp", ".table.csv.x.tmp.nii.gz", ".other.csv.abc.tmp"):
        (tmp_path / name).write_text("half")
    removed = remove_stale_temporaries(target)
    assert sorted(p.name for p in removed) == [".table.csv.k1ll3d.tmp", ".table.csv.x.tmp.nii.gz"]
    assert sorted(os.listdir(tmp_path)) == [".other.csv.abc.tmp", "table.csv"]


# ----------------------------------------------------------------------------- NRRD input (issue 13)
def _lps(affine):
    """The NRRD (LPS) space directions and origin of a RAS affine."""
    flip = np.diag([-1.0, -1.0, 1.0])
    return (flip @ affine[:3, :3]).T, flip @ affine[:3, 3]


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_nrrd_reads_with_the_geometry_of_the_same_nifti(tmp_path, space, encoding):
    import nrrd

    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (7, 5, 4)).astype(np.int16)
    affine = oblique_affine()
    if space == "left-posterior-superior":
        directions, origin = _lps(affine)
    else:
        directions, origin = affine[:3, :3].T, affine[:3, 3]
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), data, {"space": space, "space directions": directions, "space origin": origin,
                                 "encoding": encoding}, index_order="F")
    save_volume(data, tmp_path / "scan.nii.gz", affine=affine)
    a, b = load_volume(path), load_volume(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(a.data, b.data)
    assert a.data.dtype == np.int16
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)  # the same world position for every voxel
    assert list_volume_files(tmp_path) == [tmp_path / "scan.nii.gz", path]


def test_nrrd_vector_axis_goes_last_and_first_volume_reads_it(tmp_path):
    import nrrd

    data = np.arange(3 * 6 * 5 * 4, dtype=np.float32).reshape(3, 6, 5, 4)  # axis 0: a 3-vector
    directions = np.array([[np.nan] * 3, [-2.0, 0, 0], [0, -2.0, 0], [0, 0, 2.0]])
    path = tmp_path / "dwi.nrrd"
    nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": directions,
                                 "space origin": np.zeros(3), "kinds": ["vector", "domain", "domain", "domain"]},
               index_order="F")
    vol = load_volume(path)
    assert vol.data.shape == (6, 5, 4, 3)
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [2.0, 2.0, 2.0])
    first = load_volume(path, first_volume=True)
    np.testing.assert_array_equal(first.data, data[0])


def test_bad_nrrd_files_are_named(tmp_path, monkeypatch):
    import nrrd

    bad = tmp_path / "bad.nrrd"
    bad.write_text("not a nrrd\n")
    assert_input_error(bad, "not a readable NRRD image", load_volume)
    good = tmp_path / "good.nrrd"
    nrrd.write(str(good), np.zeros((8, 8, 8), np.float32), {"encoding": "raw"}, index_order="F")
    assert load_volume(good).affine.tolist() == np.eye(4).tolist()  # no geometry: 1 mm, origin 0
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert_input_error(truncated, "truncated or corrupt", load_volume)
    monkeypatch.setenv("LAB2IM_MAX_VOXELS", "100")
    assert_input_error(good, "image is too large", load_volume)
    flat = tmp_path / "flat.nrrd"
    nrrd.write(str(flat), np.zeros((8, 8), np.float32), {"space": "left-posterior-superior",
                                                         "space directions": np.eye(2, 3) * -1}, index_order="F")
    monkeypatch.delenv("LAB2IM_MAX_VOXELS")
    assert_input_error(flat, "2 spatial axes", load_volume)
