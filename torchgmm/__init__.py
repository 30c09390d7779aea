"""torchgmm: Gaussian mixtures in PyTorch.

Shape vocabulary used in every docstring: B batch (independent problems, images or video
streams), N samples, D features, K components, T frames, C channels, H height, W width.
"""

from __future__ import annotations

from torchgmm.mixture import GaussianMixture

__version__ = "0.1.0"

__all__ = ["GaussianMixture", "__version__"]
