"""The shadow test of the per-pixel mixtures: OpenCV's ``detectShadowGMM`` on unpacked planes.

A pixel ``x`` is a shadow of a background component of mean ``mu`` and variance ``var``
(Prati et al., PAMI 2003; OpenCV ``modules/video/src/bgfg_gaussmix2.cpp``,
``detectShadowGMM``) when it is a darker copy of that mean with the same chromaticity::

    a      = x.mu / |mu|^2                  brightness ratio (x projected on mu)
    darker : tau <= a <= 1                  (as x.mu <= |mu|^2 and x.mu >= tau |mu|^2)
    close  : |a mu - x|^2 < Tb var a^2       chromaticity distortion, in variances scaled by a^2

The components are visited in the model's order (background first); the test stops at the
first one that finds a shadow, at a component with ``mu = 0`` (no shadow) and after the one
that takes the cumulative weight past ``background_ratio``: only the background components
are tried. With per-channel variances the distortion is ``sum_c (a mu_c - x_c)^2 / var_c <
Tb a^2`` (the same test when the channel variances are equal).

Pure elementwise tensor functions of ``(B, H, W)`` planes (the layout ``_unpack`` of
:mod:`torchgmm.background` gives), K and C unrolled, so that the test fuses into a model's
compiled step. The public entry points are :func:`torchgmm.mog2.detect_shadow_gmm` (MOG2's
conventions) and :func:`torchgmm.background.mog_shadow` (Stauffer-Grimson's).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["shadow_planes"]


def shadow_planes(
    xs: list[Tensor],
    ws: list[Tensor],
    mus: list[list[Tensor]],
    vs: list[list[Tensor]],
    in_use: list[Tensor] | None,
    var_threshold: Tensor,
    background_ratio: Tensor,
    shadow_threshold: Tensor,
) -> Tensor:
    """Where ``x`` is a shadow of a background component: ``(B, H, W)`` bool.

    Args:
        xs: C planes ``(B, H, W)``, the frame on the 0..255 scale, in the arithmetic's dtype.
        ws: K planes, the component weights in the model's order.
        mus: K lists of C planes, the means.
        vs: K lists of 1 plane (one variance per component) or C planes (per channel).
        in_use: K bool planes, where each component exists (MOG2's ``k < n_modes``; a
            component not in use ends the visit), or None for all.
        var_threshold: ``Tb``, ``()`` tensor: the distortion bound in variances.
        background_ratio: ``TB``, ``()`` tensor: the visit ends after the component that
            takes the cumulative weight past it.
        shadow_threshold: ``tau``, ``()`` tensor.

    Returns:
        ``(B, H, W)`` bool, True = shadow-coloured. Only the colour test: a model labels a
        pixel shadow where it is not background and this is True.
    """
    shadow = done = None
    t_weight = None
    for k, (w, mu, v) in enumerate(zip(ws, mus, vs)):
        live = None if in_use is None else in_use[k]
        if done is not None:
            live = ~done if live is None else live & ~done
        numerator, denominator = xs[0] * mu[0], mu[0] * mu[0]  # summed in channel order
        for xc, mc in zip(xs[1:], mu[1:]):
            numerator = numerator + xc * mc
            denominator = denominator + mc * mc
        zero = denominator == 0  # "no division by zero allowed": the test ends, not a shadow
        a = numerator / denominator  # the brightness ratio of x to the component's mean
        dists = [a * mc - xc for xc, mc in zip(xs, mu)]
        if len(v) == 1:  # OpenCV: |a mu - x|^2 < Tb var a^2
            dist2a = dists[0] * dists[0]
            for d in dists[1:]:
                dist2a = dist2a + d * d
            close = dist2a < var_threshold * v[0] * a * a
        else:  # per-channel variances: the same test in Mahalanobis form
            dist2a = dists[0] * dists[0] / v[0]
            for d, vc in zip(dists[1:], v[1:]):
                dist2a = dist2a + d * d / vc
            close = dist2a < var_threshold * a * a
        darker = (numerator <= denominator) & (numerator >= shadow_threshold * denominator)
        found = ~zero & darker & close
        t_weight = w if t_weight is None else t_weight + w  # 0 + w0 == w0: OpenCV's running sum
        stop = zero | found | (t_weight > background_ratio)  # past the background components
        if live is not None:
            found, stop = live & found, live & stop
        shadow = found if shadow is None else shadow | found
        done = stop if done is None else done | stop
    return shadow
