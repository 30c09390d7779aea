"""The background subtractors an evaluation compares, by name, with matched settings.

torchgmm's models and OpenCV's (MOG2, contrib bgsegm MOG) behind one interface: a factory
returning a fresh callable from ``(1, C, H, W)`` uint8 frames to ``(1, 1, H, W)`` bool masks,
so that :func:`torchgmm.jobs.evaluate.evaluate_dataset` scores them all the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from torchgmm._checks import resolve_device
from torchgmm.background import BackgroundSubtractorMOG
from torchgmm.defaults import EVALUATION_METHODS as METHODS

__all__ = ["METHODS", "method_factories"]


def _opencv_subtractor(subtractor: Any) -> Callable[[Tensor], Tensor]:
    """Wrap an OpenCV BackgroundSubtractor as (1, C, H, W) uint8 -> (1, 1, H, W) bool.

    OpenCV applies its own rate schedule (``learningRate=-1``): see :func:`method_factories`.
    """

    def apply(frames: Tensor) -> Tensor:
        image = frames[0].permute(1, 2, 0).cpu().numpy()
        if image.shape[-1] == 3:
            image = image[..., ::-1].copy()  # RGB -> OpenCV's BGR
        else:
            image = image[..., 0].copy()
        mask = subtractor.apply(image, learningRate=-1)
        # 255 is foreground; MOG2's shadow value (127) is not, as CDnet scores a shadow
        return torch.from_numpy(mask == 255).to(frames.device)[None, None]

    return apply


def method_factories(
    names: Sequence[str],
    *,
    n_components: int = 3,
    learning_rate: float = 0.001,
    background_ratio: float = 0.65,
    device: str | torch.device = "auto",
    model_options: dict | None = None,
) -> dict[str, Callable[[], Callable[[Tensor], Tensor]]]:
    """Factories of fresh background subtractors, by name, with matched settings.

    - ``"torchgmm"``: :class:`BackgroundSubtractorMOG` (rate ``max(alpha, 1/t)`` with its
      default ``warmup``), plus ``model_options``.
    - ``"mog2"``: OpenCV ``createBackgroundSubtractorMOG2(history=round(1/alpha),
      detectShadows=False)`` with K mixtures and background ratio T (its rate is
      ``1/min(2t, history)``).
    - ``"mog2-defaults"``: OpenCV ``createBackgroundSubtractorMOG2(detectShadows=False)`` at
      OpenCV's own defaults (history 500, 5 mixtures, T = 0.9, varThreshold 16), ignoring the
      settings above: what a user of OpenCV gets without tuning.
    - ``"mog2-shadows"``: the same with ``detectShadows=True`` (OpenCV's own default), a
      detected shadow scored as not foreground, as CDnet scores it.
    - ``"torchgmm-mog2"``: :class:`~torchgmm.mog2.BackgroundSubtractorMOG2` at OpenCV's MOG2
      defaults (history 500, 5 mixtures, T = 0.9, varThreshold 16, shadows detected and
      scored as not foreground, as CDnet scores them), ignoring the settings above except
      ``compile`` in ``model_options``: OpenCV's MOG2 with shadows, as torchgmm computes it.
    - ``"bgsegm-mog"``: OpenCV contrib ``bgsegm.createBackgroundSubtractorMOG(history=
      round(1/alpha), nmixtures=K, backgroundRatio=T)`` (rate ``1/min(t, history)``, the same
      schedule as torchgmm's warmup).

    OpenCV's other settings stay at their defaults. All methods see the same frames.

    Raises:
        ValueError: an unknown name.
        ImportError: an OpenCV method without ``opencv-contrib-python(-headless)``.

    Example:
        >>> make = method_factories(["torchgmm"], device="cpu", model_options=dict(compile=False))["torchgmm"]
        >>> subtract = make()  # a fresh model per sequence
        >>> frame = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
        >>> subtract(frame).any().item(), subtract(frame.clone().fill_(250)).all().item()
        (False, True)
    """
    device = resolve_device(device)
    options = dict(model_options or {})
    history = max(1, round(1 / learning_rate)) if learning_rate > 0 else 1_000_000
    factories: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {}
    for name in names:
        if name == "torchgmm":
            BackgroundSubtractorMOG(n_components, learning_rate, background_ratio, **options)  # validate now

            def make_torchgmm() -> Callable[[Tensor], Tensor]:
                return BackgroundSubtractorMOG(n_components, learning_rate, background_ratio, **options).to(device)

            factories[name] = make_torchgmm
        elif name == "torchgmm-mog2":
            from torchgmm.mog2 import BackgroundSubtractorMOG2

            def make_torchgmm_mog2(compile_: bool | None = options.get("compile")) -> Callable[[Tensor], Tensor]:
                model = BackgroundSubtractorMOG2(compile=compile_).to(device)
                return lambda frames: model(frames).unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)

            factories[name] = make_torchgmm_mog2
        elif name in ("mog2", "mog2-defaults", "mog2-shadows", "bgsegm-mog"):
            try:
                import cv2

                if name == "bgsegm-mog":
                    cv2.bgsegm  # noqa: B018 - contrib module present?
            except (ImportError, AttributeError) as exc:
                raise ImportError(
                    f"method {name!r} needs OpenCV with the contrib modules: pip install opencv-contrib-python-headless"
                ) from exc
            if name == "mog2":

                def make_mog2() -> Callable[[Tensor], Tensor]:
                    sub = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=False)
                    sub.setNMixtures(n_components)
                    sub.setBackgroundRatio(background_ratio)
                    return _opencv_subtractor(sub)

                factories[name] = make_mog2
            elif name in ("mog2-defaults", "mog2-shadows"):

                def make_mog2_defaults(shadows: bool = name == "mog2-shadows") -> Callable[[Tensor], Tensor]:
                    return _opencv_subtractor(cv2.createBackgroundSubtractorMOG2(detectShadows=shadows))

                factories[name] = make_mog2_defaults
            else:

                def make_mog() -> Callable[[Tensor], Tensor]:
                    return _opencv_subtractor(
                        cv2.bgsegm.createBackgroundSubtractorMOG(
                            history=history, nmixtures=n_components, backgroundRatio=background_ratio
                        )
                    )

                factories[name] = make_mog
        else:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")
    return factories
