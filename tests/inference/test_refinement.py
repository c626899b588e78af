"""The network's posteriors refined by the scan's intensities (synthseg.inference.refinement)."""
import numpy as np
import pytest

from synthseg.inference.refinement import refine_posteriors


def two_tissue_scan(contrast: float = 0.6, noise: float = 0.05, seed: int = 0):
    """A 'brain' of two tissues (left half of the box 1, right half 2) inside background 0,
    with the true boundary at x = 12; and posteriors of a network that is sure of the brain
    but puts the boundary 4 voxels off (x = 16), with soft edges."""
    rng = np.random.default_rng(seed)
    shape = (24, 16, 16)
    truth = np.zeros(shape, int)
    truth[4:20, 4:12, 4:12] = 1
    truth[12:20, 4:12, 4:12] = 2
    image = np.where(truth == 1, 0.3, np.where(truth == 2, 0.3 + contrast, 0.0)) + rng.normal(0, noise, shape)
    post = np.zeros(shape + (3,), np.float32)
    post[..., 0] = 1.0
    brain = truth > 0
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    p2 = 1.0 / (1.0 + np.exp(-(x - 16.0) / 1.5))  # the network's (wrong) boundary
    post[brain, 0] = 0.02
    post[brain, 1] = 0.98 * (1 - p2[brain])
    post[brain, 2] = 0.98 * p2[brain]
    return image.astype(np.float32), post, truth


def dice(a, b):
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_clear_intensities_move_the_boundary_to_the_image():
    image, post, truth = two_tissue_scan()
    before = np.argmax(post, -1)
    refined = refine_posteriors(image, post, background_channel=0)
    after = np.argmax(refined, -1)
    assert dice(before == 2, truth == 2) < 0.75
    assert dice(after == 2, truth == 2) > 0.97 and dice(after == 1, truth == 1) > 0.97
    np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(refined[..., 0], post[..., 0])  # background untouched
    outside = truth == 0
    np.testing.assert_array_equal(refined[outside], post[outside])  # only brain voxels change


def test_without_contrast_the_network_decides():
    """Two tissues of one intensity: the likelihoods are equal, the prior wins."""
    image, post, truth = two_tissue_scan(contrast=0.0)
    refined = refine_posteriors(image, post, background_channel=0)
    brain = truth > 0
    agree = np.mean(np.argmax(refined, -1)[brain] == np.argmax(post, -1)[brain])
    assert agree > 0.95


def test_a_structure_the_network_does_not_find_does_not_appear():
    """A fourth channel with (almost) no probability anywhere stays empty, even where the image
    would fit it: no structure appears from nothing."""
    image, post, truth = two_tissue_scan()
    post4 = np.concatenate([post, np.zeros(post.shape[:-1] + (1,), np.float32)], -1)
    post4[..., 3] = 1e-7
    post4 /= post4.sum(-1, keepdims=True)
    image = image.copy()
    image[truth == 1] = 0.95  # now intensities fit no tissue the network found as well
    refined = refine_posteriors(image, post4, background_channel=0)
    assert np.all(refined[truth > 0, 3] == 0) and not np.any(np.argmax(refined, -1) == 3)


def test_nothing_to_refine_and_bad_input():
    image, post, _ = two_tissue_scan()
    empty = np.zeros_like(post)
    empty[..., 0] = 1.0
    np.testing.assert_array_equal(refine_posteriors(image, empty, 0), empty)  # no brain
    with pytest.raises(ValueError, match="not on one grid"):
        refine_posteriors(image[:-1], post, 0)


def test_on_a_finer_scan_the_boundary_follows_the_scan_between_network_voxels():
    """A 1 mm scan segmented by a 2 mm network: the network's posteriors put the boundary on its
    own 2 mm grid and 2 mm off; refined at the scan's resolution, the 1 mm labels follow the scan
    (the true boundary falls between two network voxels)."""
    from lab2im.geometry import argmax_on_grid
    from synthseg.inference.refinement import refine_on_finer_grid

    rng = np.random.default_rng(1)
    fine_shape = (40, 24, 24)
    truth = np.zeros(fine_shape, int)
    truth[6:34, 6:18, 6:18] = 1
    truth[21:34, 6:18, 6:18] = 2  # boundary at x = 21 mm (odd: inside a 2 mm voxel)
    image = np.where(truth == 1, 0.3, np.where(truth == 2, 0.8, 0.0)) + rng.normal(0, 0.04, fine_shape)
    coarse = np.zeros((20, 12, 12, 3), np.float32)
    coarse[..., 0] = 1
    brain = np.zeros((20, 12, 12), bool)
    brain[3:17, 3:9, 3:9] = True
    x = (np.arange(20) * 2 + 0.5)[:, None, None] * np.ones((20, 12, 12))
    p2 = 1 / (1 + np.exp(-(x - 25.0) / 2.0))  # the network's boundary at 25 mm
    coarse[brain] = np.stack([np.full(brain.sum(), 0.01), 0.99 * (1 - p2[brain]), 0.99 * p2[brain]], -1)
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = 0.5  # 2 mm voxel centres at 0.5, 2.5, ... mm: fine voxels 0-1, 2-3, ...
    fine_affine = np.eye(4)
    plain = argmax_on_grid(coarse, coarse_affine, fine_shape, fine_affine)
    mask, channels = refine_on_finer_grid(coarse, coarse_affine, 0, image.astype(np.float32), fine_affine)
    refined = plain.copy()
    refined[mask] = channels
    assert dice(plain == 2, truth == 2) < 0.85
    assert dice(refined == 2, truth == 2) > 0.97 and dice(refined == 1, truth == 1) > 0.97
    assert not np.any(mask & (truth == 0) & (plain == 0))  # background stays the network's


def test_refined_rows_on_a_finer_grid_share_the_brain_probability():
    """The refined posteriors themselves: each row sums to the interpolated brain probability,
    and their argmax is refine_on_finer_grid's labels."""
    from synthseg.inference.refinement import refine_on_finer_grid, refined_rows_on_finer_grid

    rng = np.random.default_rng(2)
    shape = (20, 12, 12)
    coarse = np.zeros(shape + (3,), np.float32)
    coarse[..., 0] = 1
    coarse[4:16, 3:9, 3:9] = (0.1, 0.5, 0.4)
    fine = rng.normal(0.5, 0.2, (40, 24, 24)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask, channels, rows = refined_rows_on_finer_grid(coarse, affine, 0, fine, np.eye(4))
    assert list(channels) == [1, 2] and rows.shape == (mask.sum(), 2) and mask.sum() > 1000
    assert np.all((rows.sum(1) > 0.5) & (rows.sum(1) <= 1.0 + 1e-5))
    assert np.allclose(rows.sum(1)[rows.sum(1) > 0.89], 0.9, atol=1e-4)  # inside: 1 - background
    mask2, labels = refine_on_finer_grid(coarse, affine, 0, fine, np.eye(4))
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(labels, channels[np.argmax(rows, 1)])


def test_a_finer_scans_native_posteriors_are_refined_like_its_labels():
    """A 1 mm (LAS) scan and a 2 mm model: the labels are refined at 1 mm, and the posteriors
    written beside them (--post) are the same refinement, not the interpolated network output."""
    from lab2im.io import Volume
    from synthseg.inference.model import SegmentationModel
    from synthseg.inference.segmentation import segment_volume
    from tests.inference.test_predict import conv_network

    # background where the normalised intensity is low; labels 5 (mid) and 6 (bright), both unsure
    net = conv_network(np.reshape([0.0, 10.0, 12.0], (1, 1, 1, 1, 3)), [0.0, -2.0, -3.5])
    model = SegmentationModel(net, labels=[0, 5, 6], voxel_size=2.0, refine=True)
    rng = np.random.default_rng(0)
    shape = (40, 36, 38)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ball = (x - 20) ** 2 + (y - 18) ** 2 + (z - 19) ** 2 <= 14 ** 2
    data = rng.normal(5, 1, shape).astype(np.float32)
    data[ball] = np.where(x[ball] < 17, 40.0, 90.0) + rng.normal(0, 2, ball.sum())
    affine = np.array([[-1.0, 0, 0, 40], [0, 1, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])
    seg = segment_volume(Volume(data, affine), model, flip=False, cleanup=False)
    assert seg.refined and seg.native_refined
    labels = seg.native_segmentation()
    post = seg.native_posteriors()
    assert post.shape == shape + (3,)
    np.testing.assert_allclose(post.sum(-1), 1.0, atol=1e-4)
    brain = labels != 0
    argmax = np.asarray(model.labels)[np.argmax(post, -1)]
    assert brain.sum() > 5000
    np.testing.assert_array_equal(argmax, labels)  # the brain/background decision included
    truth = np.where(ball, np.where(x < 17, 5, 6), 0)
    assert np.mean(argmax[ball] == truth[ball]) > 0.95
    # refined, not the interpolated network output: the background's share is the network's, the
    # brain's is redistributed between the two tissues by the scan's intensities
    plain = seg._to_native(seg.posteriors, order=1)
    np.testing.assert_allclose(post[brain, 0], plain[brain, 0], atol=1e-4)
    assert np.abs(post[brain, 1:] - plain[brain, 1:]).max(-1).mean() > 0.05
    # the same whichever output is asked for first (the labels' interpolation pass also
    # computes the refinement; the posteriors' does not give the labels)
    again = segment_volume(Volume(data, affine), model, flip=False, cleanup=False)
    np.testing.assert_allclose(again.native_posteriors(), post, atol=1e-6)
    np.testing.assert_array_equal(again.native_segmentation(), labels)


def edge_of_the_head(seed: int = 3):
    """Posteriors with an unsure rim around a sure 'brain': in the rim the background is the most
    likely label (0.45) but the two brain structures together outweigh it (0.30 + 0.25), and the
    rim's intensity fits structure 1 well (the case that leaked extracerebral CSF into the neck)."""
    rng = np.random.default_rng(seed)
    shape = (24, 20, 20)
    image = rng.normal(0.0, 0.02, shape)
    post = np.zeros(shape + (3,), np.float32)
    post[..., 0] = 1.0
    post[4:20, 4:16, 4:16] = (0.45, 0.30, 0.25)  # the rim (overwritten inside)
    image[4:20, 4:16, 4:16] = 0.3 + rng.normal(0, 0.02, (16, 12, 12))
    post[6:14, 6:14, 6:14] = (0.02, 0.6, 0.38)  # the network's boundary at x = 14, the image's at 12
    post[14:18, 6:14, 6:14] = (0.02, 0.38, 0.6)
    image[6:12, 6:14, 6:14] = 0.3 + rng.normal(0, 0.02, (6, 8, 8))
    image[12:18, 6:14, 6:14] = 0.8 + rng.normal(0, 0.02, (6, 8, 8))
    return image.astype(np.float32), post


def test_the_network_keeps_the_brain_background_decision():
    image, post = edge_of_the_head()
    refined = refine_posteriors(image, post, background_channel=0)
    rim = post[..., 0] == np.float32(0.45)
    assert rim.sum() > 1000
    np.testing.assert_array_equal(refined[rim], post[rim])  # background stays the argmax: not refined
    moved = np.argmax(refined, -1) != np.argmax(post, -1)
    assert moved[12:14, 6:14, 6:14].all() and moved.sum() == moved[12:14, 6:14, 6:14].sum()  # to the image's
    np.testing.assert_array_equal(np.argmax(refined, -1) == 0, np.argmax(post, -1) == 0)


def test_random_posteriors_keep_their_background_argmax():
    """Whatever the posteriors and the image, a voxel is background after the refinement exactly
    when it was before (ties included: the background wins them, as label 0 does in an argmax)."""
    rng = np.random.default_rng(4)
    shape = (16, 16, 16)
    post = rng.dirichlet([1.5, 1.0, 1.0, 0.5], size=shape).astype(np.float32)
    post[0, :, :] = (0.4, 0.4, 0.2, 0.0)  # ties between background and a structure: background
    post[1, :, :] = (0.3, 0.3, 0.3, 0.1)
    image = rng.normal(0.5, 0.3, shape).astype(np.float32)
    refined = refine_posteriors(image, post, background_channel=0)
    assert np.mean(np.argmax(refined, -1) != np.argmax(post, -1)) > 0.002  # it does refine
    np.testing.assert_array_equal(np.argmax(refined, -1) == 0, np.argmax(post, -1) == 0)
    np.testing.assert_array_equal(refined[:2], post[:2])  # the tied rows are background: not refined
    np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-5)


def test_on_a_finer_grid_the_background_argmax_stays_too():
    """The same decision on a finer scan: a fine voxel is refined only where the interpolated
    posteriors' most likely label is a brain structure and stays one after the refinement."""
    from lab2im.geometry import argmax_on_grid
    from synthseg.inference.refinement import refined_rows_on_finer_grid

    image, post = edge_of_the_head()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine_image = np.repeat(np.repeat(np.repeat(image, 2, 0), 2, 1), 2, 2)
    plain = argmax_on_grid(post, affine, fine_image.shape, np.eye(4))
    mask, channels, rows = refined_rows_on_finer_grid(post, affine, 0, fine_image, np.eye(4))
    from lab2im.geometry import resample_to_grid

    background = resample_to_grid(post[..., 0], affine, fine_image.shape, np.eye(4), order=1, fill=1.0)
    assert mask.sum() > 1000 and not np.any(mask & (plain == 0))
    assert np.all(rows.max(1) > background[mask])
    assert np.sum((plain == 0) & (background < 0.5)) > 1000  # the rim: summed brain above one half, not refined


def test_the_refinement_relabels_the_network_brain_but_never_grows_it():
    """A stray piece of structure 1 touching structure 2 (found in the neck, say), whose intensity
    is structure 2's: the network's clean-up removes it (its next most likely label is the
    background). Refined alone it would become structure 2 and join it; the refinement must only
    relabel the brain the network kept, grown by REFINED_GROWTH voxels, while still moving the
    boundary inside it to the image's."""
    from scipy import ndimage

    from synthseg.inference.postprocessing import clean_posteriors
    from synthseg.inference.segmentation import REFINED_GROWTH, refine_and_clean

    rng = np.random.default_rng(5)
    shape = (30, 18, 18)
    image = rng.normal(0.0, 0.02, shape)
    post = np.zeros(shape + (3,), np.float32)
    post[..., 0] = 1.0
    post[4:14, 4:14, 4:14] = (0.02, 0.9, 0.08)  # the network's boundary at x = 14, the image's at 12
    post[14:20, 4:14, 4:14] = (0.02, 0.08, 0.9)
    image[4:12, 4:14, 4:14] += 0.3
    image[12:20, 4:14, 4:14] += 0.8
    post[20:26, 6:12, 6:12] = (0.4, 0.45, 0.15)  # the stray piece: structure 1, touching structure 2
    image[20:26, 6:12, 6:12] += 0.8
    image = image.astype(np.float32)

    network = clean_posteriors(post.copy(), 0)
    assert not network[20:26].any()  # the network's clean-up removes the stray piece
    old = clean_posteriors(refine_posteriors(image, post, 0), 0)
    assert (old[20:26, 6:12, 6:12] == 2).all()  # refined alone, it joins structure 2

    refined, channels, raw, margin = refine_and_clean(image, post.copy(), 0, refine=True, cleanup=True)
    assert REFINED_GROWTH == 1
    grown = ndimage.binary_dilation(network != 0, iterations=REFINED_GROWTH)
    assert not np.any((channels != 0) & ~grown)  # the network's brain and one voxel around it, no more
    assert (channels[20, 6:12, 6:12] == 2).all() and not channels[21:].any()  # one layer of the piece, no more
    np.testing.assert_array_equal((channels != 0)[:20], network[:20] != 0)
    assert (channels[12:14, 4:14, 4:14] == 2).all() and (network[12:14, 4:14, 4:14] == 1).all()  # relabelled
    np.testing.assert_array_equal(channels, np.argmax(refined, -1))
    assert raw[1] > (channels == 1).sum() and margin.shape == shape  # the stray piece counts before the clean-up
    plain = refine_and_clean(image, post.copy(), 0, refine=False, cleanup=True)
    np.testing.assert_array_equal(plain[1], network)
    assert plain[3] is None


@pytest.mark.parametrize("rotated", [False, True])
def test_the_finer_grids_refinement_gives_the_interpolated_argmax_in_the_same_pass(rotated):
    """``argmax_out`` is :func:`lab2im.geometry.argmax_on_grid` at every fine voxel, though only
    the box around the network's brain is interpolated; with no brain, all background."""
    from lab2im.geometry import argmax_on_grid
    from synthseg.inference.refinement import refined_rows_on_finer_grid

    rng = np.random.default_rng(5)
    post = np.zeros((12, 14, 10, 3), np.float32)
    post[..., 0] = 1.0
    blob = rng.random((5, 6, 4, 3)).astype(np.float32)
    post[4:9, 3:9, 3:7] = blob / blob.sum(-1, keepdims=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine_affine = np.array([[0, 1.0, 0, 0.5], [1.0, 0, 0, -1.0], [0, 0, 1, 0.5], [0, 0, 0, 1]]) if rotated \
        else np.array([[1.0, 0, 0, -1.5], [0, 1, 0, 0.5], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    shape = (30, 26, 21)
    image = rng.normal(0, 1, shape).astype(np.float32)
    out = np.full(shape, -1, np.int32)
    refined_rows_on_finer_grid(post, affine, 0, image, fine_affine, argmax_out=out)
    expected = argmax_on_grid(post, affine, shape, fine_affine, fill=0)
    assert (expected != 0).sum() > 200 and (expected == 0).sum() > 2000
    np.testing.assert_array_equal(out, expected)
    post[..., 0], post[..., 1:] = 1.0, 0.0
    assert refined_rows_on_finer_grid(post, affine, 0, image, fine_affine, argmax_out=out) is None
    assert (out == 0).all()
