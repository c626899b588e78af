"""Property-based tests (hypothesis) of the geometry that prediction and generation rely on.

Already covered elsewhere (not repeated here): crop/pad then undo restores the kept region
(``test_volumes.py``), a reorientation round trip on random orientations (``test_geometry.py``).
Here: every one of the 48 axis permutations and flips, resampling a label map onto its own grid,
and a deformation by a zero field, through the layer and through the ops it is built from.
"""
import itertools

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from lab2im import ops as lops
from lab2im.geometry import reorient_to_canonical, resample_to_grid, resample_volume
from lab2im.io import Volume, voxel_size_of
from lab2im.layers import RandomSpatialDeformation
from tests.layer_helpers import run

CODES = [("L", "R"), ("P", "A"), ("I", "S")]
#: all 48 orientations: 6 axis permutations x 8 flips, as nibabel axis codes ("RAS", "LIP", ...)
ORIENTATIONS = ["".join(CODES[p][f > 0] for p, f in zip(perm, flips))
                for perm in itertools.permutations(range(3)) for flips in itertools.product((-1, 1), repeat=3)]
dims = st.integers(1, 6)
voxel = st.floats(0.2, 4.0, allow_nan=False, allow_infinity=False)
coordinate = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)


def affine_for(axcodes, voxel_size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """Affine whose array axes point along ``axcodes`` with the given voxel size (mm) and origin."""
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for axis, (world, flip) in enumerate(nib.orientations.axcodes2ornt(axcodes)):
        aff[int(world), axis] = flip * voxel_size[axis]
    aff[:3, 3] = origin
    return aff


def test_the_48_orientations_are_distinct():
    assert len(set(ORIENTATIONS)) == 48


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(dims, dims, dims), voxel_size=st.tuples(voxel, voxel, voxel),
       origin=st.tuples(coordinate, coordinate, coordinate), channels=st.sampled_from([0, 2]))
def test_reorientation_round_trip_over_all_48_orientations(shape, voxel_size, origin, channels):
    data = np.arange(np.prod(shape) * (channels or 1)).reshape(shape + ((channels,) if channels else ()))
    for axcodes in ORIENTATIONS:
        affine = affine_for(axcodes, voxel_size, origin)
        canon, record = reorient_to_canonical(Volume(data, affine))
        assert nib.aff2axcodes(canon.affine) == ("R", "A", "S"), axcodes
        assert np.array_equal(record.undo(canon.data), data), axcodes
        assert record.is_identity == (axcodes == "RAS")
        # same voxels, same world positions: the corner voxel (0, 0, 0) keeps its place in mm
        corner = data[(0, 0, 0)]
        (where,) = np.argwhere(np.all(canon.data.reshape(canon.shape[:3] + (-1,)) ==
                                      np.reshape(corner, (-1,)), axis=-1))
        np.testing.assert_allclose(canon.affine @ np.r_[where, 1.0], affine @ np.r_[0.0, 0.0, 0.0, 1.0],
                                   atol=1e-9)
        np.testing.assert_allclose(sorted(canon.voxel_size), sorted(voxel_size))


@settings(max_examples=25, deadline=None)
@given(axcodes=st.sampled_from(ORIENTATIONS), shape=st.tuples(dims, dims, dims),
       voxel_size=st.tuples(voxel, voxel, voxel), origin=st.tuples(coordinate, coordinate, coordinate),
       angles=st.tuples(*[st.floats(-np.pi, np.pi, allow_nan=False)] * 3), seed=st.integers(0, 2 ** 16))
def test_resampling_a_label_map_onto_its_own_grid_is_identity(axcodes, shape, voxel_size, origin, angles, seed):
    labels = np.random.default_rng(seed).integers(0, 50, shape).astype(np.int16)
    affine = affine_for(axcodes, voxel_size, origin)
    assert np.array_equal(resample_to_grid(labels, affine, shape, affine, order=0), labels)
    same = resample_volume(Volume(labels, affine), voxel_size_of(affine), order=0)
    assert same.data.dtype == labels.dtype and np.array_equal(same.data, labels)
    np.testing.assert_allclose(same.affine, affine, atol=1e-9)
    # an oblique grid (rotated in world space) too
    rotation = np.eye(4)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(4)
        i, j = [a for a in range(3) if a != axis]
        r[[i, i, j, j], [i, j, i, j]] = c, -s, s, c
        rotation = r @ rotation
    oblique = rotation @ affine
    assert np.array_equal(resample_to_grid(labels, oblique, shape, oblique, order=0), labels)


@settings(max_examples=25, deadline=None)
@given(shape=st.one_of(st.tuples(dims, dims), st.tuples(dims, dims, dims)), channels=st.integers(1, 2),
       steps=st.integers(0, 7), seed=st.integers(0, 2 ** 16))
def test_warping_by_an_integrated_zero_velocity_is_identity(shape, channels, steps, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, (2, *shape, channels)).astype(np.int32)
    image = rng.random((2, *shape, channels)).astype(np.float32)
    zero = ops.zeros((2, *shape, len(shape)), "float32")
    disp = lops.integrate_velocity(zero, steps)
    np.testing.assert_array_equal(ops.convert_to_numpy(disp), 0.0)
    coords = lops.identity_grid(shape)[None] + disp
    for padding in ("zeros", "border"):
        np.testing.assert_array_equal(ops.convert_to_numpy(lops.sample(labels, coords, "nearest", padding)), labels)
        np.testing.assert_allclose(ops.convert_to_numpy(lops.sample(image, coords, "linear", padding)), image,
                                   atol=1e-6)


_LAYERS = {}


@pytest.mark.slow
@pytest.mark.backends
@settings(max_examples=8, deadline=None)
@given(shape=st.just((6, 9, 7)), seed=st.integers(0, 2 ** 16))
def test_spatial_deformation_with_zero_field_and_identity_affine_is_identity(shape, seed):
    """The layer's full path (field resized, integrated, resized back; affine; sampling) with a
    drawn transformation whose velocity is zero and whose affine is the identity, on random
    content (one shape: on JAX each new shape costs ~15 s of compilation)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 9, (1, *shape, 1)).astype(np.int32)
    image = rng.random((1, *shape, 1)).astype(np.float32)
    if shape not in _LAYERS:  # one layer per shape (what is traced once is reused)
        _LAYERS[shape] = RandomSpatialDeformation(nonlin_std=4.0, seed=seed)
        _LAYERS[shape].build([labels.shape, image.shape])
    layer = _LAYERS[shape]
    t = layer.get_random_transformation(1)
    t = {"velocity": ops.zeros_like(t["velocity"]),
         "affine": ops.convert_to_tensor(np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)[None], "float32")}
    (out_labels, out_image), _ = run(layer, labels, image, transformation=t)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(out_image, image, atol=1e-5)
