"""BrainGenerator on real files: defaults, outputs and bad input."""
import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg import BrainGenerator
from synthseg.data import labels as protocol


def write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def brain_dir(tmp_path, blocks_labels):
    d = tmp_path / "labels"
    d.mkdir()
    lab = blocks_labels.copy()
    lab[0:2] = protocol.SKULL  # an extra-cerebral generation label
    write(d / "a.nii.gz", lab)
    write(d / "b.nii.gz", np.pad(lab, ((0, 2), (1, 1), (0, 0))))  # another shape: padded to common
    return d


def test_generates_image_and_segmentation_with_protocol_defaults(brain_dir):
    gen = BrainGenerator(brain_dir, seed=0, output_shape=(16, 16, 16))
    assert gen.options.lr_pairs == protocol.lr_pairs()
    image, labels = gen.generate_image()
    assert image.shape == (16, 16, 16) and image.dtype == np.float32
    assert labels.shape == (16, 16, 16) and labels.dtype == np.int32
    assert protocol.SKULL not in labels  # generation-only label mapped to background
    assert set(np.unique(labels)) <= set(protocol.segmentation_labels().tolist())
    assert gen.affine.shape == (4, 4) and gen.input_shape == (26, 30, 20)


def test_same_seed_reproduces_and_batch_shapes(brain_dir):
    a = BrainGenerator(brain_dir, seed=3, output_shape=(12, 12, 12)).generate_image()
    b = BrainGenerator(brain_dir, seed=3, output_shape=(12, 12, 12)).generate_image()
    np.testing.assert_array_equal(a[0], b[0])
    images, labels = BrainGenerator(brain_dir, batch_size=2, seed=0, output_shape=(12, 12, 12),
                                    n_channels=2).generate_batch()
    assert images.shape == (2, 12, 12, 12, 2) and labels.shape == (2, 12, 12, 12)


def test_the_parameters_of_a_scan_explain_and_replay_it(brain_dir):
    from lab2im.model import replay

    plain = BrainGenerator(brain_dir, seed=4, output_shape=(12, 12, 12))
    explained = BrainGenerator(brain_dir, seed=4, output_shape=(12, 12, 12))
    for _ in range(2):  # the same scans as without parameters, scan after scan
        image, labels = plain.generate_image()
        image2, labels2, parameters = explained.generate_image(return_parameters=True)
        np.testing.assert_allclose(image2, image, atol=1e-5)
        np.testing.assert_array_equal(labels2, labels)
    means = parameters["gmm"]
    assert {"deformation", "gmm", "intensity"} <= set(parameters) and all(v.shape[0] == 1 for v in means.values())
    # replayed from its label map (one of the two) and the parameters alone
    replays = [replay(explained.model, explained.label_maps[i:i + 1], parameters)[0][0, ..., 0]
               for i in range(len(explained.label_maps))]
    assert any(np.array_equal(r, image2) for r in replays)


def test_non_protocol_labels_get_generic_options(tmp_path, blocks_labels):
    path = write(tmp_path / "x.nii.gz", (blocks_labels + 100 * (blocks_labels > 0)).astype(np.int32))
    gen = BrainGenerator(path, seed=0)
    assert gen.options.generation_labels == [0, 102, 103, 141, 142]
    assert set(np.unique(gen.generate_image()[1])) <= {0, 102, 103, 141, 142}


def test_input_is_reoriented_to_ras(tmp_path, blocks_labels):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    path = write(tmp_path / "lps.nii.gz", blocks_labels, lps)
    gen = BrainGenerator(path, seed=0, flip_prob=0)
    np.testing.assert_array_equal(gen.label_maps[0, ..., 0], blocks_labels[::-1, ::-1])
    assert np.all(np.diag(gen.affine)[:3] > 0)


# ---------------------------------------------------------------------------- bad input
def test_float_label_map(tmp_path, blocks_labels):
    path = write(tmp_path / "float.nii.gz", blocks_labels + np.float32(0.25))
    with pytest.raises(InputError, match=r"float.nii.gz: label map is not integer"):
        BrainGenerator(path)


def test_float_dtype_with_integer_values_is_accepted(tmp_path, blocks_labels):
    path = write(tmp_path / "f.nii.gz", blocks_labels.astype(np.float32))
    assert BrainGenerator(path, seed=0).label_maps.dtype == np.int32


def test_4d_label_map(tmp_path, blocks_labels):
    path = write(tmp_path / "four.nii.gz", np.stack([blocks_labels] * 3, -1))
    with pytest.raises(InputError, match=r"four.nii.gz: label map is 4D"):
        BrainGenerator(path)


def test_empty_label_map(tmp_path):
    path = write(tmp_path / "empty.nii.gz", np.zeros((8, 8, 8), np.int32))
    with pytest.raises(InputError, match=r"empty.nii.gz: label map is empty"):
        BrainGenerator(path)


def test_negative_labels(tmp_path, blocks_labels):
    path = write(tmp_path / "neg.nii.gz", blocks_labels - 1)
    with pytest.raises(InputError, match="neg.nii.gz: label map contains negative labels"):
        BrainGenerator(path)


def test_labels_missing_from_generation_labels(tmp_path, blocks_labels):
    path = write(tmp_path / "extra.nii.gz", blocks_labels)
    with pytest.raises(InputError, match=r"extra.nii.gz: label map holds labels that are not generation labels: \[3, 42\]"):
        BrainGenerator(path, generation_labels=[0, 2, 41])


def test_wrong_prior_shape(tmp_path, blocks_labels):
    path = write(tmp_path / "ok.nii.gz", blocks_labels)
    priors = tmp_path / "means.npy"
    np.save(priors, np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"means.npy: prior_means has shape \(2, 3\)"):
        BrainGenerator(path, prior_means=str(priors))


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="nope.nii.gz: no such file"):
        BrainGenerator(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder contains no label map files"):
        BrainGenerator(tmp_path / "empty")


def test_mixed_voxel_sizes(tmp_path, blocks_labels):
    d = tmp_path / "mixed"
    d.mkdir()
    write(d / "a.nii.gz", blocks_labels)
    write(d / "b.nii.gz", blocks_labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"b.nii.gz: voxel size \[2.0, 2.0, 2.0\] mm differs"):
        BrainGenerator(d)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("hello")
    with pytest.raises(InputError, match="notes.nii.gz"):
        BrainGenerator(path)
