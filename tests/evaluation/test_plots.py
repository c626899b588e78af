"""Figures: the prediction overlay at the scan's own resolution."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from synthseg.evaluation.plots import save_overlay


def test_overlay_is_large_dark_and_shows_thick_slices_thick(tmp_path):
    # a 1 x 1 x 4 mm scan: 40 x 40 x 10 voxels of a 40 mm cube
    image = np.random.default_rng(0).random((40, 40, 10)).astype(np.float32) * 100
    labels = np.zeros(image.shape, np.int32)
    labels[10:30, 10:30, 3:7] = 2
    labels[12:28, 12:28, 4:6] = 3
    path = save_overlay(image, labels, (1.0, 1.0, 4.0), tmp_path / "o.png", title="scan: segmentation")
    png = mpimg.imread(path)
    height, width = png.shape[:2]
    assert width >= 1200 and height >= 800  # large enough to judge folding
    corner = png[:5, :5, :3]
    assert corner.max() < 0.1  # dark background: white text is readable on any contrast
    # cortex (red) and cerebral WM (white in FreeSurfer colours: drawn blue, or it would vanish
    # on a grey scan) both appear in the overlays
    red = (png[..., 0] > 0.5) & (png[..., 1] < 0.4) & (png[..., 2] < 0.5)
    blue = (png[..., 2] > png[..., 0] + 0.2) & (png[..., 2] > 0.4)
    assert red.sum() > 100 and blue.sum() > 100
    with pytest.raises(ValueError, match="one shape"):
        save_overlay(image, labels[..., :5], (1, 1, 4), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_overlay_of_an_empty_segmentation_still_draws_the_scan(tmp_path):
    image = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    path = save_overlay(image, np.zeros((16, 16, 16), np.int32), 2.0, tmp_path / "e.png")
    assert mpimg.imread(path).std() > 0.01
