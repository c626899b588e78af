"""Start the Keras backend without its start-up chatter on the terminal.

TensorFlow's C++ libraries print several lines when they load and when they first look for a
GPU (``cudart_stub.cc``, ``cuda_platform.cc: failed call to cuInit``, oneDNN notices), some of
them before ``TF_CPP_MIN_LOG_LEVEL`` is read, straight to file descriptor 2. The command line
calls :func:`start_backend` before its work: the file descriptor is pointed at a temporary
file while the backend loads and finds its devices; what was written there is shown only
if loading fails (or with ``verbose``).
"""
from __future__ import annotations

import os
import sys
import tempfile


def start_backend(verbose: bool = False) -> None:
    """Import Keras and initialise its backend's devices, quietly unless ``verbose``.

    Raises:
        whatever importing the backend raises, after printing what it wrote to stderr.
    """
    if verbose:
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        failed = True
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                # looks for GPUs (the cuInit message) without starting the runtime, so that
                # thread counts can still be set afterwards (synthseg.inference.batch.set_threads)
                tf.config.list_physical_devices()
                tf.get_logger().setLevel("ERROR")
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
