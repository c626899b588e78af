"""DICOM series reading (lab2im.dicom), on real files written here with pydicom."""
import shutil

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from lab2im.dicom import apply_window, is_dicom_folder, load_any, load_dicom_series  # noqa: E402
from lab2im.errors import InputError  # noqa: E402
from lab2im.io import Volume, load_volume, save_volume  # noqa: E402

SLOPE, INTERCEPT = 2.0, -1024.0
SHAPE = (7, 5, 6)  # (columns, rows, slices)
COL_SPACING, ROW_SPACING, SLICE_SPACING = 0.7, 0.9, 2.5  # mm
MARK = (5, 1, 4)  # voxel (column, row, slice) given a unique value


def rotation(ax, ay, az):
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(20, -15, 10)  # columns: row direction, column direction, slice normal (LPS)
ORIGIN = np.array([-101.5, 87.25, -40.0])  # LPS, centre of the first voxel of slice 0 (mm)


def stored_values(seed=0):
    """Stored (raw) int16 pixel values ``(columns, rows, slices)``, one unique maximum at MARK."""
    stored = np.random.default_rng(seed).integers(0, 1500, SHAPE).astype(np.int16)
    stored[MARK] = 3000
    return stored


def hounsfield(stored):
    return stored.astype(np.float32) * SLOPE + INTERCEPT


def slice_position(k, rot=OBLIQUE, origin=ORIGIN):
    return origin + k * SLICE_SPACING * rot[:, 2]


def world_ras(i, j, k, rot=OBLIQUE, origin=ORIGIN):
    """World position (RAS, mm) of voxel (column i, row j, slice k), by the DICOM definition."""
    lps = slice_position(k, rot, origin) + i * COL_SPACING * rot[:, 0] + j * ROW_SPACING * rot[:, 1]
    return lps * np.array([-1.0, -1.0, 1.0])


def expected_affine(rot=OBLIQUE, origin=ORIGIN):
    affine = np.eye(4)
    affine[:3, 3] = world_ras(0, 0, 0, rot, origin)
    for axis in range(3):
        affine[:3, axis] = world_ras(*np.eye(3)[axis], rot, origin) - affine[:3, 3]
    return affine


def write_series(folder, stored, rot=OBLIQUE, origin=ORIGIN, series_uid=None, description="CT head",
                 order=None, prefix="IM", slices=None, tweak=None):
    """Write one DICOM file per slice of ``stored`` (``(columns, rows, slices)``) into ``folder``.

    ``order`` permutes the file names (file ``order[k]`` holds slice ``k``); ``slices`` picks
    which slices to write; ``tweak(k, ds)`` may edit a slice's dataset before it is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = stored.shape[2]
    order = list(range(n)) if order is None else list(order)
    for k in (range(n) if slices is None else slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([rot[:, 0], rot[:, 1]])]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in slice_position(k, rot, origin)]
        ds.PixelSpacing = [ROW_SPACING, COL_SPACING]  # between rows, between columns
        ds.SliceThickness = SLICE_SPACING
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = SLOPE
        ds.RescaleIntercept = INTERCEPT
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()  # (rows, columns)
        if tweak is not None:
            tweak(k, ds)
        pydicom.dcmwrite(folder / f"{prefix}{order[k]:04d}.dcm", ds, enforce_file_format=True)
    return series_uid


@pytest.fixture
def series_dir(tmp_path):
    folder = tmp_path / "series"
    write_series(folder, stored_values(), order=[3, 0, 5, 1, 4, 2])
    return folder


def test_reads_oblique_anisotropic_series(series_dir):
    vol = load_dicom_series(series_dir)
    assert isinstance(vol, Volume) and vol.path == str(series_dir)
    assert vol.shape == SHAPE and vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.affine, expected_affine(), atol=1e-4)
    np.testing.assert_allclose(vol.voxel_size, [COL_SPACING, ROW_SPACING, SLICE_SPACING], atol=1e-5)
    np.testing.assert_array_equal(vol.data, hounsfield(stored_values()))  # Hounsfield units
    mark = np.unravel_index(np.argmax(vol.data), vol.shape)
    assert mark == MARK and vol.data[mark] == 3000 * SLOPE + INTERCEPT
    np.testing.assert_allclose((vol.affine @ [*mark, 1])[:3], world_ras(*MARK), atol=1e-4)


def test_axial_series_is_lps_in_nifti_terms(tmp_path):
    # the usual axial CT: rows go to patient left, columns to posterior, slices to superior
    write_series(tmp_path / "ax", stored_values(), rot=np.eye(3), origin=np.array([-120.0, -110.0, 30.0]))
    vol = load_dicom_series(tmp_path / "ax")
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([-COL_SPACING, -ROW_SPACING, SLICE_SPACING]),
                               atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], [120.0, 110.0, 30.0], atol=1e-6)


def test_slices_written_in_descending_position(tmp_path):
    # the same grid, slice normal flipped: slices are then sorted the other way round
    flipped = OBLIQUE.copy()
    flipped[:, 1] *= -1  # column direction flipped -> normal flipped
    write_series(tmp_path / "s", stored_values(), rot=flipped)
    vol = load_dicom_series(tmp_path / "s")
    mark = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose((vol.affine @ [*mark, 1])[:3], world_ras(*MARK, rot=flipped), atol=1e-4)
    assert np.linalg.det(vol.affine[:3, :3]) * np.linalg.det(expected_affine(flipped)[:3, :3]) < 0
    for k in range(SHAPE[2]):  # every voxel keeps its world position
        src = np.linalg.solve(expected_affine(flipped), vol.affine @ [0, 0, k, 1]).round().astype(int)
        np.testing.assert_array_equal(vol.data[:, :, k], hounsfield(stored_values())[:, :, src[2]])


def test_nifti_round_trip(series_dir, tmp_path):
    vol = load_dicom_series(series_dir)
    out = save_volume(vol, tmp_path / "ct.nii.gz")
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, expected_affine(), atol=1e-4)
    assert img.header.get_sform(coded=True)[1] == 1 and img.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(img.header.get_qform(), expected_affine(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), hounsfield(stored_values()))
    back = load_volume(out)
    mark = np.unravel_index(np.argmax(back.data), back.shape)
    np.testing.assert_allclose((back.affine @ [*mark, 1])[:3], world_ras(*MARK), atol=1e-4)


def test_file_order_does_not_matter(tmp_path):
    stored = stored_values(3)
    uid = generate_uid()
    write_series(tmp_path / "a", stored, series_uid=uid)
    write_series(tmp_path / "b", stored, series_uid=uid, order=[5, 4, 3, 2, 1, 0])
    write_series(tmp_path / "c", stored, series_uid=uid, order=[2, 5, 0, 3, 1, 4],
                 tweak=lambda k, ds: setattr(ds, "InstanceNumber", 7 - k))  # misleading numbers
    a, b, c = (load_dicom_series(tmp_path / n) for n in "abc")
    for other in (b, c):
        np.testing.assert_array_equal(other.data, a.data)
        np.testing.assert_allclose(other.affine, a.affine, atol=1e-9)


def test_per_slice_rescale(tmp_path):
    stored = stored_values()

    def tweak(k, ds):
        ds.RescaleSlope, ds.RescaleIntercept = 1 + k, -1000 + 10 * k

    write_series(tmp_path / "s", stored, tweak=tweak)
    vol = load_dicom_series(tmp_path / "s")
    expected = stored.astype(np.float32) * (1 + np.arange(6)) + (-1000 + 10 * np.arange(6))
    np.testing.assert_array_equal(vol.data, expected)


def test_non_dicom_files_are_ignored(series_dir):
    (series_dir / "README.txt").write_text("not a dicom file\n")
    (series_dir / "notes.dcm").write_bytes(b"\0" * 300)  # .dcm name, no DICOM preamble
    (series_dir / "sub").mkdir()
    vol = load_dicom_series(series_dir)
    assert vol.shape == SHAPE
    assert is_dicom_folder(series_dir)


def test_several_series_need_a_choice(tmp_path):
    folder = tmp_path / "mixed"
    uid_a = write_series(folder, stored_values(), description="CT head", prefix="A")
    uid_b = write_series(folder, stored_values(1)[:, :, :4], description="CT bone", prefix="B")
    with pytest.raises(InputError) as err:
        load_dicom_series(folder)
    msg = str(err.value)
    assert str(folder) in msg and "2 DICOM series" in msg
    assert uid_a in msg and uid_b in msg and '"CT head"' in msg and '"CT bone"' in msg
    assert "6 slices" in msg and "4 slices" in msg
    b = load_dicom_series(folder, series_uid=uid_b)
    np.testing.assert_array_equal(b.data, hounsfield(stored_values(1)[:, :, :4]))
    with pytest.raises(InputError, match="no DICOM series with SeriesInstanceUID 1.2.3"):
        load_dicom_series(folder, series_uid="1.2.3")


def test_missing_slice_is_reported(tmp_path):
    uid = write_series(tmp_path / "gap", stored_values(), slices=[0, 1, 2, 4, 5])
    with pytest.raises(InputError) as err:
        load_dicom_series(tmp_path / "gap")
    msg = str(err.value)
    assert uid in msg and "1 missing slice" in msg
    assert "between slice 3 (IM0002.dcm" in msg and "and slice 4 (IM0004.dcm" in msg
    assert "gap 5.000 mm, expected 2.500 mm" in msg


@pytest.mark.parametrize("what, tweak, match", [
    ("orientation", lambda k, ds: k == 2 and setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
     "different orientations"),
    ("spacing", lambda k, ds: k == 2 and setattr(ds, "PixelSpacing", [1.0, 1.0]), "different pixel spacings"),
    ("duplicate", lambda k, ds: k == 2 and setattr(ds, "ImagePositionPatient",
                                                   [f"{v:.6f}" for v in slice_position(1)]),
     "slices at the same position"),
    ("irregular", lambda k, ds: k == 2 and setattr(ds, "ImagePositionPatient",
                                                   [f"{v:.6f}" for v in slice_position(2.4)]),
     "irregular slice spacing"),
    ("no position", lambda k, ds: k == 2 and delattr(ds, "ImagePositionPatient"), "no ImagePositionPatient"),
])
def test_inconsistent_series_is_reported(tmp_path, what, tweak, match):
    write_series(tmp_path / "bad", stored_values(), tweak=tweak)
    with pytest.raises(InputError, match=match):
        load_dicom_series(tmp_path / "bad")


def test_different_slice_sizes_are_reported(tmp_path):
    folder = tmp_path / "sizes"
    uid = write_series(folder, stored_values(), slices=[0, 1, 2])
    small = stored_values()[:6]
    write_series(folder, small, series_uid=uid, slices=[3, 4, 5], order=range(6))
    with pytest.raises(InputError, match="different sizes"):
        load_dicom_series(folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    save_volume(np.zeros((2, 2, 2), np.uint8), tmp_path / "b.nii.gz")
    assert not is_dicom_folder(tmp_path)
    with pytest.raises(InputError, match=r"no DICOM files in .* \(2 other files ignored\)"):
        load_dicom_series(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files in .*empty"):
        load_dicom_series(tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        load_dicom_series(tmp_path / "missing")
    with pytest.raises(InputError, match="not a folder"):
        load_dicom_series(tmp_path / "a.txt")


def test_apply_window():
    data = np.array([-2000, -161, -160, 0, 40, 240, 241, 3000], dtype=np.int16)
    out = apply_window(data, 40, 400)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-160, -160, -160, 0, 40, 240, 240, 240])
    f64 = apply_window(data.astype(np.float64), 0, 1)
    assert f64.dtype == np.float64 and f64.min() == -0.5 and f64.max() == 0.5
    for width in (0, -10, np.nan):
        with pytest.raises(InputError, match="invalid CT window"):
            apply_window(data, 40, width)


def test_load_with_window(series_dir):
    vol = load_dicom_series(series_dir, window=(40, 400))
    raw = hounsfield(stored_values())
    np.testing.assert_array_equal(vol.data, np.clip(raw, -160, 240))
    assert vol.data.min() == -160 and vol.data.max() == 240


def test_load_any(series_dir, tmp_path):
    from_dicom = load_any(series_dir)
    nifti = save_volume(from_dicom, tmp_path / "ct.nii.gz")
    from_nifti = load_any(nifti)
    np.testing.assert_array_equal(from_nifti.data, from_dicom.data)
    np.testing.assert_allclose(from_nifti.affine, from_dicom.affine, atol=1e-4)
    windowed = load_any(nifti, window=(40, 400))
    assert windowed.data.min() == -160 and windowed.data.max() == 240
    with pytest.raises(InputError, match="series_uid only applies"):
        load_any(nifti, series_uid="1.2.3")
    other = tmp_path / "plain"
    other.mkdir()
    shutil.copy(nifti, other / "ct.nii.gz")
    with pytest.raises(InputError, match=r"no DICOM files in .*plain \(1 other file ignored\)"):
        load_any(other)


def test_geometry_agrees_with_nibabel_nicom(series_dir):
    # independent check: nibabel's per-slice DICOM wrapper (its array axis 0 is the DICOM row,
    # so its first two affine columns are ours swapped; its affine is in LPS)
    dicomwrappers = pytest.importorskip("nibabel.nicom.dicomwrappers")
    vol = load_dicom_series(series_dir)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    for f in sorted(series_dir.iterdir()):
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(f))
        k = int(round(np.linalg.solve(lps, [*wrapper.affine[:3, 3], 1])[2]))
        np.testing.assert_allclose(wrapper.affine[:3, [1, 0]], lps[:3, :2], atol=1e-4)
        np.testing.assert_allclose(wrapper.affine[:3, 3], (lps @ [0, 0, k, 1])[:3], atol=1e-4)
        np.testing.assert_array_equal(np.asarray(wrapper.get_data()).T, vol.data[:, :, k])
