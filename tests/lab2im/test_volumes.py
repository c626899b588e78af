import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab2im.errors import InputError
from lab2im.volumes import (
    bounding_box,
    convert_labels,
    crop_or_pad,
    fill_holes,
    keep_largest_component_per_label,
    largest_connected_component,
    make_lut,
    pad_to_multiple,
    unique_labels,
)

small = st.integers(1, 7)


@settings(max_examples=30, deadline=None)
@given(old=st.tuples(small, small, small), new=st.tuples(small, small, small), channels=st.sampled_from([0, 2]))
def test_crop_or_pad_undo_restores_the_kept_region(old, new, channels):
    shape = old + ((channels,) if channels else ())
    array = np.arange(1, np.prod(shape) + 1).reshape(shape)
    out, record = crop_or_pad(array, new, value=-1)
    assert out.shape == new + shape[3:]
    back = record.undo(out, value=0)
    assert back.shape == array.shape
    kept = back != 0
    assert np.array_equal(back[kept], array[kept])
    # exactly min(old, new) voxels per axis survive the round trip
    assert kept.sum() == np.prod(np.minimum(old, new)) * (channels or 1)
    # the padding is only the value, and every original voxel in `out` sits at offset
    assert (out == -1).sum() == out.size - kept.sum()
    index = tuple(np.argwhere(out != -1)[0][:3]) if (out != -1).any() else None
    if index is not None:
        orig = tuple(i + o for i, o in zip(index, record.offset))
        assert out[index].tolist() == array[orig].tolist()


def test_crop_or_pad_is_centred_and_updates_affine():
    array = np.zeros((6, 5, 4), dtype=np.uint8)
    array[3, 2, 1] = 1
    out, record = crop_or_pad(array, (4, 9, 7))  # odd pads put the extra voxel at the end
    assert out.shape == (4, 9, 7) and out.dtype == np.uint8
    assert record.offset == (1, -2, -1)
    (index,) = np.argwhere(out == 1)
    assert tuple(index) == (2, 4, 2)
    assert crop_or_pad(array, (None, 3))[0].shape == (6, 3, 4)
    affine = np.diag([2.0, 3.0, 1.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    new_affine = record.apply_to_affine(affine)
    np.testing.assert_allclose(new_affine @ np.r_[index, 1], affine @ np.r_[3, 2, 1, 1])
    assert np.array_equal(record.apply(array), out)
    with pytest.raises(ValueError, match="expected spatial shape"):
        record.undo(array)


def test_pad_to_multiple():
    array = np.ones((5, 8, 9, 2), dtype=np.float32)
    out, record = pad_to_multiple(array, 4, value=0)
    assert out.shape == (8, 8, 12, 2)
    assert out.sum() == array.sum()
    assert np.array_equal(record.undo(out), array)
    out, _ = pad_to_multiple(np.ones((5, 8, 9)), (1, 3, 5))
    assert out.shape == (5, 9, 10)


def test_bounding_box():
    labels = np.zeros((10, 12, 14), dtype=np.int32)
    assert bounding_box(labels) is None
    labels[2:5, 6, 0:13] = 3
    assert bounding_box(labels) == (slice(2, 5), slice(6, 7), slice(0, 13))
    assert bounding_box(labels, margin=2) == (slice(0, 7), slice(4, 9), slice(0, 14))
    assert bounding_box(labels, margin=(0, 10, 1)) == (slice(2, 5), slice(0, 12), slice(0, 14))


def test_lut_and_convert_labels():
    lut = make_lut([2, 41, 3], [1, 1, 5], default=-1)
    assert lut.shape == (42,)
    assert lut[2] == 1 and lut[41] == 1 and lut[3] == 5 and lut[0] == -1 and lut[40] == -1
    labels = np.array([[[0, 2, 3, 41, 99]]], dtype=np.uint8)
    out = convert_labels(labels, [2, 41, 3], [1, 1, 5])
    assert out.tolist() == [[[0, 1, 5, 1, 0]]]
    assert np.array_equal(convert_labels(labels.astype(np.float32), [99], [7]), (labels == 99) * 7)


@pytest.mark.parametrize("source, dest, match", [
    ([-1, 2], [0, 1], "non-negative"),
    ([1, 2], [1], "destination"),
    ([1, 1], [1, 2], "duplicates"),
    ([1.5], [1], "integers"),
])
def test_make_lut_rejects_bad_labels(source, dest, match):
    with pytest.raises(InputError, match=match):
        make_lut(source, dest)


def test_convert_labels_rejects_negative_and_fractional_label_maps():
    with pytest.raises(InputError, match="negative"):
        convert_labels(np.array([0, -3, 2]), [2], [1])
    with pytest.raises(InputError, match="non-integer"):
        convert_labels(np.array([0.0, 0.5]), [2], [1])


def test_unique_labels():
    out = unique_labels(np.array([[5.0, 0.0], [5.0, 2.0]], dtype=np.float32))
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 5]


def test_largest_connected_component_and_connectivity():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[0:3, 0:3, 0:3] = True      # 27 voxels
    mask[5:7, 5:7, 5:7] = True      # 8 voxels
    mask[3, 3, 3] = True            # touches the big cube by a corner only
    lcc = largest_connected_component(mask)
    assert lcc.sum() == 27 and lcc[1, 1, 1] and not lcc[3, 3, 3]
    assert largest_connected_component(mask, connectivity=3).sum() == 28
    assert not largest_connected_component(np.zeros((3, 3, 3))).any()
    with pytest.raises(ValueError):
        largest_connected_component(mask, connectivity=4)


def test_fill_holes():
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    mask[3, 3, 3] = False
    open_pit = mask.copy()
    open_pit[3, 3, 1:4] = False     # cavity connected to the outside: not a hole
    assert fill_holes(mask).sum() == 125
    assert np.array_equal(fill_holes(open_pit), open_pit)


def test_keep_largest_component_per_label():
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[0:4, 0:4, 0:4] = 2
    labels[8, 8, 8] = 2             # stray voxel of label 2: removed
    labels[6:9, 0:2, 0:2] = 7
    labels[0, 9, 9] = 7             # stray voxel of label 7: kept (not listed)
    out = keep_largest_component_per_label(labels, [0, 2, 5])
    assert out.dtype == np.int16
    assert out[8, 8, 8] == 0 and (out == 2).sum() == 64
    assert out[0, 9, 9] == 7 and (out == 7).sum() == 13
    assert labels[8, 8, 8] == 2     # input untouched
