import itertools

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lab2im.geometry import (
    reorient_to_canonical,
    resample_to_grid,
    resample_volume,
    resampled_grid,
)
from lab2im.io import Volume


def affine_for(axcodes, voxel_size=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 5.0)):
    """Affine whose array axes point along ``axcodes`` (e.g. ``'LPS'``), via nibabel orientations."""
    ornt = nib.orientations.axcodes2ornt(axcodes)
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for axis, (world, flip) in enumerate(ornt):
        aff[int(world), axis] = flip * voxel_size[axis]
    aff[:3, 3] = origin
    return aff


def world(affine, index):
    return (affine @ np.r_[index, 1.0])[:3]


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "LIA", "SRA", "PIL", "ASR"])
def test_reorient_preserves_world_position_and_undo_is_exact(axcodes):
    data = np.random.default_rng(0).integers(0, 1000, (4, 5, 6)).astype(np.int32)
    affine = affine_for(axcodes, voxel_size=(1.0, 2.0, 3.0))
    marked = (1, 3, 4)
    data[marked] = 5000
    canon, record = reorient_to_canonical(Volume(data, affine))
    assert nib.aff2axcodes(canon.affine) == ("R", "A", "S")
    assert canon.data.dtype == data.dtype
    (new_index,) = np.argwhere(canon.data == 5000)
    np.testing.assert_allclose(world(canon.affine, new_index), world(affine, marked))
    np.testing.assert_allclose(sorted(canon.voxel_size), [1.0, 2.0, 3.0])
    assert np.array_equal(record.undo(canon.data), data)
    assert record.is_identity == (axcodes == "RAS")


def test_reorient_undo_4d_and_rejects_wrong_shape():
    data = np.random.default_rng(1).random((3, 4, 5, 2)).astype(np.float32)
    canon, record = reorient_to_canonical(Volume(data, affine_for("LIA")))
    assert canon.shape == (3, 5, 4, 2)
    assert np.array_equal(record.undo(canon.data), data)
    with pytest.raises(ValueError, match="canonical shape"):
        record.undo(data)


@settings(max_examples=30, deadline=None)
@given(perm=st.permutations([0, 1, 2]), flips=st.tuples(*[st.sampled_from([-1, 1])] * 3),
       shape=st.tuples(*[st.integers(1, 5)] * 3))
def test_reorient_round_trip_property(perm, flips, shape):
    codes = [("L", "R"), ("P", "A"), ("I", "S")]
    axcodes = "".join(codes[p][f > 0] for p, f in zip(perm, flips))
    data = np.arange(np.prod(shape)).reshape(shape)
    affine = affine_for(axcodes)
    canon, record = reorient_to_canonical(Volume(data, affine))
    assert nib.aff2axcodes(canon.affine) == ("R", "A", "S")
    assert np.array_equal(record.undo(canon.data), data)
    for index in itertools.product(*[range(s) for s in shape[:2]]):
        (new_index,) = np.argwhere(canon.data == data[index + (0,)])
        np.testing.assert_allclose(world(canon.affine, new_index), world(affine, index + (0,)))


def block_volume(shape=(40, 40, 40), affine=None):
    data = np.zeros(shape, dtype=np.float32)
    data[8:24, 12:30, 10:20] = 100.0
    return Volume(data, np.eye(4) if affine is None else affine)


def world_centre_of_mass(volume):
    return world(volume.affine, np.array(ndimage.center_of_mass(volume.data)))


def test_resample_down_and_up_keeps_block_position():
    affine = affine_for("LPS", origin=(3.0, 7.0, -11.0))
    original = block_volume(affine=affine)
    down = resample_volume(original, 2.0, order=1)
    assert down.shape == (20, 20, 20)
    np.testing.assert_allclose(down.voxel_size, 2.0)
    np.testing.assert_allclose(world_centre_of_mass(down), world_centre_of_mass(original), atol=0.5)
    up = resample_volume(down, 1.0, order=1)
    assert up.shape == original.shape
    np.testing.assert_allclose(up.affine, original.affine, atol=1e-9)
    box = ndimage.find_objects((up.data > 50).astype(int))[0]
    for got, want in zip(box, (slice(8, 24), slice(12, 30), slice(10, 20))):
        assert abs(got.start - want.start) <= 1 and abs(got.stop - want.stop) <= 1
    np.testing.assert_allclose(world_centre_of_mass(up), world_centre_of_mass(original), atol=0.5)


def test_label_resample_to_own_grid_is_identity():
    labels = np.random.default_rng(2).integers(0, 7, (9, 10, 11)).astype(np.uint8)
    volume = Volume(labels, affine_for("LIA", voxel_size=(1.0, 1.0, 1.2)))
    same = resample_volume(volume, volume.voxel_size, order=0)
    assert same.data.dtype == np.uint8
    assert np.array_equal(same.data, labels)
    np.testing.assert_allclose(same.affine, volume.affine)
    assert np.array_equal(resample_to_grid(labels, volume.affine, labels.shape, volume.affine, 0), labels)


def test_label_downsampling_keeps_dtype_and_values():
    labels = np.zeros((20, 20, 20), dtype=np.int16)
    labels[2:10, 2:18, 4:16] = 17
    labels[10:18, 2:18, 4:16] = 4
    out = resample_volume(Volume(labels, np.eye(4)), 3.0, order=0)
    assert out.data.dtype == np.int16
    assert set(np.unique(out.data)) == {0, 4, 17}


def test_anisotropic_to_isotropic_shape_and_affine():
    affine = affine_for("RAS", voxel_size=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0))
    volume = Volume(np.random.default_rng(3).random((10, 12, 8)).astype(np.float32), affine)
    out = resample_volume(volume, 1.0, order=1)
    assert out.shape == (10, 12, 40)
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.voxel_size, 1.0)
    # the field of view (outer faces of the corner voxels) is unchanged
    for vol in (volume, out):
        lo = world(vol.affine, -0.5 * np.ones(3))
        hi = world(vol.affine, np.asarray(vol.shape) - 0.5)
        np.testing.assert_allclose(lo, [-0.5, -0.5, -2.5])
        np.testing.assert_allclose(hi, [9.5, 11.5, 37.5])


def test_resampled_grid_rejects_bad_voxel_size():
    with pytest.raises(ValueError, match="positive"):
        resampled_grid((4, 4, 4), np.eye(4), 0)


def test_resample_to_grid_maps_back_to_native_grid():
    labels = np.zeros((24, 20, 16), dtype=np.int32)
    labels[4:14, 5:15, 3:11] = 2
    labels[14:20, 5:15, 3:11] = 9
    native = Volume(labels, affine_for("LIA", voxel_size=(1.0, 1.0, 1.0)))
    canon, _ = reorient_to_canonical(native)
    working = resample_volume(canon, 0.5, order=0)
    back = resample_to_grid(working.data, working.affine, labels.shape, native.affine, order=0)
    assert back.dtype == np.int32
    assert np.array_equal(back, labels)
    one_hot = np.stack([working.data == k for k in (0, 2, 9)], axis=-1).astype(np.float32)
    posteriors = resample_to_grid(one_hot, working.affine, labels.shape, native.affine, order=1)
    assert posteriors.shape == labels.shape + (3,)
    assert np.array_equal(np.array([0, 2, 9])[posteriors.argmax(-1)], labels)


def test_resample_to_grid_fills_outside_source():
    data = np.ones((4, 4, 4), dtype=np.float32)
    target = np.eye(4)
    target[:3, 3] = 2.0  # target grid shifted by 2 voxels: its last 2 slices per axis leave the source
    out = resample_to_grid(data, np.eye(4), (4, 4, 4), target, order=1, fill=-1)
    assert np.all(out[:2, :2, :2] == 1)
    assert np.all(out[2:] == -1) and np.all(out[:, 2:] == -1)


@pytest.mark.parametrize("rotated", [False, True])
def test_argmax_on_grid_equals_argmax_of_linear_resampling(rotated):
    """The separable fast path (parallel axes) and the general path both give the argmax of
    the linearly resampled channels, and ``fill`` outside the source grid."""
    from lab2im.geometry import argmax_on_grid, resample_to_grid

    rng = np.random.default_rng(3)
    scores = rng.random((20, 24, 18, 5)).astype(np.float32)
    source = np.diag([2.0, 2.0, 2.0, 1.0])
    source[:3, 3] = [-10, 5, 3]
    target = np.diag([1.0, 1.0, 1.0, 1.0])
    target[:3, 3] = [-11.3, 4.2, 2.0]
    if rotated:
        target = np.array([[0, 1.0, 0, -11.3], [-1, 0, 0, 50.2], [0, 0, 1, 2.0], [0, 0, 0, 1]])
    shape = (41, 49, 37)
    expected = np.argmax(resample_to_grid(scores, source, shape, target, order=1), axis=-1)
    inside = resample_to_grid(np.ones(scores.shape[:3], np.float32), source, shape, target, order=1) > 0
    got = argmax_on_grid(scores, source, shape, target, fill=4, slab=7)
    assert got.shape == shape and got.dtype == np.int32
    assert 0.5 < inside.mean() < 1
    np.testing.assert_array_equal(got[inside], expected[inside])
    assert (got[~inside] == 4).all()


def test_canonical_affine_is_the_affine_of_the_reoriented_volume():
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, -1.0, 3], [1.5, 0, 0, 2], [0, 2, 0, 1], [0, 0, 0, 1]])
    canonical, reo = reorient_to_canonical(Volume(rng.random((5, 6, 7)), affine))
    np.testing.assert_allclose(reo.canonical_affine, canonical.affine)
    assert reo.canonical_shape == canonical.shape


@pytest.mark.parametrize("parallel", [True, False])
def test_interpolated_slabs_cover_the_grid_with_the_linear_resampling(parallel):
    """``interpolated_slabs``: consecutive slabs that tile the target's first axis, each the
    linear resampling's values where it flags the voxels inside the source grid, and those
    flags are the source grid's extent (separable path for parallel axes, general otherwise)."""
    from lab2im.geometry import interpolated_slabs, resample_to_grid

    rng = np.random.default_rng(3)
    scores = rng.random((10, 12, 9, 3)).astype(np.float32)
    source = np.diag([2.0, 2.0, 2.0, 1.0])
    source[:3, 3] = [1, -2, 3]
    target = np.diag([1.0, 1.0, 1.0, 1.0]) if parallel else \
        np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.5, 0], [0, 0, 0, 1]])
    target[:3, 3] += [-3, -2, -1]  # part of the target lies outside the source grid
    shape = (26, 28, 14)
    want = resample_to_grid(scores, source, shape, target, order=1, fill=0)
    extent = resample_to_grid(np.ones(scores.shape[:3], np.float32), source, shape, target, order=1, fill=0) > 0
    assert 0.3 < extent.mean() < 0.95
    got, inside, covered = np.zeros(shape + (3,), np.float32), np.zeros(shape, bool), []
    for sl, part, flags in interpolated_slabs(scores, source, shape, target, slab=5):
        assert part.shape == (sl.stop - sl.start,) + shape[1:] + (3,) and flags.shape == part.shape[:3]
        got[sl], inside[sl] = part, flags
        covered.extend(range(sl.start, sl.stop))
    assert covered == list(range(shape[0]))
    np.testing.assert_array_equal(inside, extent)
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-6)
    with pytest.raises(ValueError, match="expected an"):
        next(interpolated_slabs(scores[..., 0], source, shape, target))


def _box_mesh(lo, hi):
    """A closed axis-aligned box (12 triangles) from corner ``lo`` to corner ``hi`` (mm)."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))]
    return corners, np.array(faces)


def _sphere_mesh(centre, radius, n=48):
    """A closed UV sphere: ``n`` rings of ``2n`` vertices and the two poles."""
    theta = np.linspace(0, np.pi, n + 2)[1:-1]
    phi = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]]) * radius + centre
    m, last = 2 * n, len(verts) - 1
    faces = [(0, 1 + j, 1 + (j + 1) % m) for j in range(m)]
    for i in range(n - 1):
        for j in range(m):
            a, b = 1 + i * m + j, 1 + i * m + (j + 1) % m
            faces += [(a, a + m, b), (b, a + m, b + m)]
    faces += [(last, 1 + (n - 1) * m + (j + 1) % m, 1 + (n - 1) * m + j) for j in range(m)]
    return verts, np.array(faces)


def test_mesh_interior_is_exact_for_a_box_on_any_grid():
    """Voxel centres strictly inside a box are in, every other centre is out, also on a grid
    with 0.5 mm voxels, flipped axes and an offset."""
    from lab2im.geometry import mesh_interior

    verts, faces = _box_mesh((2.3, 3.7, 1.2), (10.6, 8.1, 7.9))
    inside = mesh_interior(verts, faces, (14, 14, 14), np.eye(4))
    i, j, k = np.meshgrid(*[np.arange(14)] * 3, indexing="ij")
    want = (i > 2.3) & (i < 10.6) & (j > 3.7) & (j < 8.1) & (k > 1.2) & (k < 7.9)
    np.testing.assert_array_equal(inside, want)
    affine = np.diag([-0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = (12.0, -1.0, 0.0)
    inside = mesh_interior(verts, faces, (30, 24, 20), affine)
    world = (np.stack(np.meshgrid(*[np.arange(s) for s in (30, 24, 20)], indexing="ij"), -1)
             @ affine[:3, :3].T + affine[:3, 3])
    want = np.all((world > (2.3, 3.7, 1.2)) & (world < (10.6, 8.1, 7.9)), axis=-1)
    np.testing.assert_array_equal(inside, want)


def test_mesh_interior_of_a_sphere_and_of_a_shell():
    """A sphere's interior matches the centres within its radius (up to the faceting), and the
    interior of a mesh made of two nested spheres is the shell between them (parity)."""
    from lab2im.geometry import mesh_interior

    centre = np.array([20.2, 19.7, 20.4])
    outer, faces = _sphere_mesh(centre, 15.0)
    inner, inner_faces = _sphere_mesh(centre, 9.0)
    grid = np.stack(np.meshgrid(*[np.arange(41)] * 3, indexing="ij"), -1)
    r = np.linalg.norm(grid - centre, axis=-1)
    ball = mesh_interior(outer, faces, (41, 41, 41), np.eye(4))
    assert np.all(ball[r < 14.9]) and not np.any(ball[r > 15.0])
    shell = mesh_interior(np.concatenate([outer, inner]), np.concatenate([faces, inner_faces + len(outer)]),
                          (41, 41, 41), np.eye(4))
    assert np.all(shell[(r > 9.0) & (r < 14.9)]) and not np.any(shell[(r < 8.9) | (r > 15.0)])
