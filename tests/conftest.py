"""Shared test set-up. The Keras backend is TensorFlow unless KERAS_BACKEND says otherwise;
`make test` runs the tests marked `backends` a second time on JAX."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def blocks_labels():
    """A 3D label map ``(24, 28, 20)`` with nested blocks: background 0, labels 2, 3, 41, 42."""
    lab = np.zeros((24, 28, 20), np.int32)
    lab[2:22, 3:25, 2:18] = 2
    lab[12:22, 3:25, 2:18] = 41
    lab[5:10, 8:20, 6:14] = 3
    lab[15:20, 8:20, 6:14] = 42
    return lab
