"""Frameworks imported with their own logging kept off the user's terminal.

TensorFlow prints C++ start-up lines, absl warnings and Python warnings on
import and on first use; none of it is surgery's to say. The settings are the
frameworks' own switches, set only if the user has not set them.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any


def _silence_env() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")     # C++ INFO/WARNING/ERROR lines
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")     # its "oneDNN custom operations are on" notice
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _silence_loggers() -> None:
    for name in ("tensorflow", "absl", "keras", "tf2onnx", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def quiet_tensorflow() -> Any:
    """``import tensorflow``, silently."""
    _silence_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow as tf
    _silence_loggers()
    tf.get_logger().setLevel(logging.ERROR)
    return tf


def quiet_keras() -> Any:
    """``import keras`` (and its TensorFlow backend), silently."""
    _silence_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import keras
    _silence_loggers()
    return keras
