"""Gaussian mixtures fitted by EM, as batched tensor operations.

The functional core solves B independent problems at once: data ``x`` of shape ``(B, N, D)``
with optional non-negative ``sample_weight`` ``(B, N)`` (histogram counts are weights), K
components. :class:`GaussianMixture` is a thin ``nn.Module`` with scikit-learn's vocabulary
that stores the fitted parameters as buffers.

Parameter shapes follow scikit-learn with a leading batch dimension:

==============  ==================  ========================
covariance      ``covariances``     ``precisions_cholesky``
==============  ==================  ========================
``full``        ``(B, K, D, D)``    ``(B, K, D, D)``
``tied``        ``(B, D, D)``       ``(B, D, D)``
``diag``        ``(B, K, D)``       ``(B, K, D)``
``spherical``   ``(B, K)``          ``(B, K)``
==============  ==================  ========================

How the E- and M-steps are computed. For every covariance type the log-density of a
component is a linear function of a fixed set of *quadratic features* of a sample,
``phi(x) = [x_i x_j (i <= j) ..., x_1 ... x_D]`` (``[x_d^2 ..., x]`` for ``diag``,
``[|x|^2, x]`` for ``spherical``)::

    log N(x | mu_k, P_k^-1) = -1/2 (D log 2 pi + x'P_k x - 2 mu_k'P_k x + mu_k'P_k mu_k)
                              + log det L_k                            (P_k = L_k L_k')

so the E-step is one batched matmul ``A (B, K, F) @ phi (B, F, N)`` followed by a
log-sum-exp over K, and the M-step's sufficient statistics (first and second moments per
component) are one batched matmul ``resp (B, K, N) @ phi' (B, N, F)``. The features are
built once per fit; no ``(B, N, K, D)`` temporary is ever made. Internally everything per
sample is stored component-major, ``(B, K, N)`` and ``(B, F, N)``: the reductions over K
then run over contiguous rows, about 3x faster than over a trailing dim of size K. Because the expansion
subtracts large terms, the data are centred on their weighted mean before fitting (the
mixture is translation-equivariant, so this changes nothing but rounding). The expansion still
subtracts terms of size (separation / sigma)^2: in float32 the variances lose about
``(separation / sigma)^2 * 1e-7`` relative precision (measured: 0.04% at 100 sigma apart,
2% at 400, 9% at 1,000; the fit fails near 3,000), where scikit-learn centres each component. Fit such data in
float64, which matches scikit-learn to ~1e-14.
Memory: ``phi`` holds ``N (D (D + 3) / 2)`` numbers per problem for ``full``/``tied``.

Sufficient statistics. An iteration needs only ``sum_n w_n r_nk``, ``sum_n w_n r_nk phi(x_n)``
and ``sum_n w_n log p(x_n)`` (:class:`_Statistics`): the E-step produces them directly, tile by
tile of N (:func:`_e_step_statistics`; the (B, K, N) responsibilities never exist whole), or as
one compiled loop over the samples with ``compile=True``. Sums over tiles, chunks and processes
add up, so the same loop fits data in memory, data streamed in chunks, and shards on several
processes (:mod:`torchgmm.mixture_chunked`, :mod:`torchgmm.distributed`), with equal results.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Iterator,
    Literal,
    NamedTuple,
    Sequence,
    Union,
)

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import numpy as np

from torchgmm.exceptions import ConvergenceWarning
from torchgmm._checks import (
    ShapeError,
    check_choice,
    check_finite,
    check_generators,
    check_ndim,
    check_positive_int,
    check_real,
    check_tensor,
)

__all__ = [
    "CovarianceType",
    "InitMethod",
    "GaussianMixtureFit",
    "ConvergenceWarning",
    "fit_gaussian_mixture",
    "is_chunked_source",
    "estimate_log_prob",
    "estimate_log_resp",
    "precisions_cholesky_from_covariances",
    "GaussianMixture",
]

CovarianceType = Literal["full", "tied", "diag", "spherical"]
InitMethod = Literal["kmeans", "k-means++", "random", "random_from_data", "range", "kmeans++"]
#: one generator for a batch's random draws, or one per problem (see fit_gaussian_mixture)
Generators = Union[torch.Generator, Sequence[torch.Generator], None]
#: data streamed in chunks: a re-iterable (list, DataLoader) or a zero-argument callable
#: returning an iterator, of ``(N_i, D)`` / ``(B, N_i, D)`` tensors or ``(x, sample_weight)`` pairs
Chunks = Union[Iterable[Any], Callable[[], Iterator[Any]]]
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data", "range", "kmeans++")
LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixtureFit(NamedTuple):
    """The result of :func:`fit_gaussian_mixture`; every field has a leading batch dim B."""

    weights: Tensor  #: (B, K) mixing proportions, summing to 1
    means: Tensor  #: (B, K, D)
    covariances: Tensor  #: shape by covariance type, see the module docstring
    precisions_cholesky: Tensor  #: same shape as ``covariances``
    lower_bound: Tensor  #: (B,) weighted mean log-likelihood at the last E-step
    n_iter: Tensor  #: (B,) int64 EM iterations run per problem
    converged: Tensor  #: (B,) bool
    #: (B, T) the lower bound after each iteration, T = the most iterations any problem ran;
    #: NaN after a problem stopped (scikit-learn's ``lower_bounds_``). None where a fit was
    #: rebuilt from stored parameters.
    lower_bounds: Tensor | None = None


# ----------------------------------------------------------------------------------------
# Argument handling
# ----------------------------------------------------------------------------------------
#: Precisions the E- and M-steps run in; half-precision data are fitted in float32.
FIT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _fit_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``x`` is fitted in: float32/float64 as given, float16/bfloat16 -> float32
    (LAPACK has no half-precision Cholesky, and ~3 significant digits cannot hold the
    squared features anyway), integers and bool -> the default dtype."""
    if x.is_complex():
        raise TypeError(
            f"`x` must be real (float32 or float64; integer and half-precision data are cast), got dtype {x.dtype}."
        )
    if x.dtype in _HALF_DTYPES:
        return torch.float32
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _batched_data(
    x: Tensor, sample_weight: Tensor | None, *, check_values: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Validate ``x`` (B, N, D) or (N, D) and ``sample_weight``; return them batched.

    ``check_values`` checks ``sample_weight``'s values; ``x``'s are checked by the caller
    (``fit_gaussian_mixture`` does it on the centred data, with its range).
    """
    check_tensor(x, "x")
    check_ndim(x, "x", (2, 3), "(B, N, D) or (N, D)")
    if x.shape[-1] == 0:
        raise ShapeError(f"`x` must have at least one feature (D >= 1), got shape {tuple(x.shape)}.")
    dtype = _fit_dtype(x)
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    return x, _batched_weight(sample_weight, x, check_values=check_values)


def _batched_weight(sample_weight: Tensor | None, x: Tensor, *, check_values: bool = True) -> Tensor | None:
    """Validate ``sample_weight`` (B, N) or (N,) against batched ``x`` (B, N, D); return it
    batched, on x's device and in x's dtype."""
    if sample_weight is None:
        return None
    check_tensor(sample_weight, "sample_weight")
    if sample_weight.ndim == 1:
        sample_weight = sample_weight.unsqueeze(0)
    if sample_weight.shape != x.shape[:2]:
        raise ShapeError(
            f"`sample_weight` must have shape (B, N) = {tuple(x.shape[:2])} to match `x`, "
            f"got {tuple(sample_weight.shape)}."
        )
    sample_weight = sample_weight.to(device=x.device, dtype=x.dtype)
    if check_values:
        check_finite(sample_weight, "sample_weight")
        if bool((sample_weight < 0).any()):
            raise ValueError("`sample_weight` must be non-negative, got negative values.")
        if bool((sample_weight.sum(1) <= 0).any()):
            raise ValueError(
                "`sample_weight` sums to zero for at least one problem; every problem needs some positive weight."
            )
    return sample_weight


def _batched_init(value: Tensor | None, name: str, ndim: int, x: Tensor) -> Tensor | None:
    """Bring an explicit ``*_init`` tensor to x's device/dtype with a leading batch dim."""
    if value is None:
        return None
    value = torch.as_tensor(value).to(device=x.device, dtype=x.dtype)
    if value.ndim == ndim - 1:
        value = value.unsqueeze(0)
    if value.ndim != ndim:
        raise ShapeError(f"`{name}` has {value.ndim} dimensions; expected {ndim - 1} or {ndim}.")
    return value.expand(x.shape[0], *value.shape[1:])


def _check_centred(centred: Tensor, x: Tensor) -> None:
    """Raise unless the centred data are finite and their squares cannot overflow.

    One reduction and one host sync serve both checks: NaN/inf anywhere in ``x`` makes its
    mean, and so every centred value, non-finite, and the largest ``|x - mean|`` bounds the
    quadratic features (``x_i x_j``), their sums over N, and the k-means++ distances
    (``|x - c|^2 <= 4 D max|x - mean|^2``), so all stay finite below ``limit``.
    """
    if centred.numel() == 0:
        return
    _, n, d = centred.shape
    _check_spread(float(centred.abs().amax()), centred.dtype, n, d, lambda: check_finite(x, "x"))


def _check_spread(peak: float, dtype: torch.dtype, n: int, d: int, name_non_finite: Any = None) -> None:
    """Raise unless ``peak`` (the largest ``|x - mean|``, NaN/inf when ``x`` had any) keeps the
    squared features of N samples of D features finite in ``dtype``; ``name_non_finite()``
    raises first, naming where the NaN/inf is, when it can."""
    if not math.isfinite(peak):
        if name_non_finite is not None:
            name_non_finite()
        raise ValueError(
            "The weighted mean of `x` overflowed: `sample_weight` times `x` exceeds "
            f"{torch.finfo(dtype).max:.3g}; rescale `sample_weight` or `x`, or fit in float64."
        )
    limit = math.sqrt(torch.finfo(dtype).max / (4 * n * d))
    if not peak <= limit:
        raise ValueError(
            f"`x` is too spread out to fit in {dtype}: values lie up to {peak:.3g} from "
            f"their mean, and the EM's squared features and k-means++ distances overflow beyond "
            f"{limit:.3g} (for N={n}, D={d}). Rescale `x` (e.g. divide by its standard deviation) "
            f"or fit in float64."
        )


def _check_param_shape(value: Tensor, name: str, expected: tuple[int, ...]) -> None:
    if tuple(value.shape) != expected:
        raise ShapeError(f"`{name}` must have shape {expected}, got {tuple(value.shape)}.")


# ----------------------------------------------------------------------------------------
# Quadratic features and the log-density as a linear map of them
# ----------------------------------------------------------------------------------------
def _triu_indices(d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(d, d, device=device)
    return rows, cols


def _quadratic_features(x: Tensor, covariance_type: str) -> Tensor:
    """phi(x): (B, N, D) -> (B, F, N), feature-major, the features the log-density is linear in."""
    b, n, d = x.shape
    xt = x.mT  # (B, D, N), a view
    if covariance_type in ("full", "tied"):
        # x_i x_j, i <= j, written feature by feature into the output: no (B, F, N) temporary
        # besides the result (a loop over the D (D + 1) / 2 features, never over samples)
        out = x.new_empty(b, d * (d + 1) // 2 + d, n)
        rows, cols = torch.triu_indices(d, d).tolist()
        for f, (i, j) in enumerate(zip(rows, cols)):
            torch.mul(xt[:, i], xt[:, j], out=out[:, f])
        out[:, -d:] = xt
        return out
    if covariance_type == "diag":
        second = xt * xt
    else:  # spherical
        second = (xt * xt).sum(1, keepdim=True)
    return torch.cat([second, xt], dim=1)


def _precision_matrices(precisions_cholesky: Tensor, covariance_type: str) -> Tensor:
    """P = L L' for full (B, K, D, D) / tied (B, D, D); L^2 for diag and spherical."""
    if covariance_type in ("full", "tied"):
        return precisions_cholesky @ precisions_cholesky.mT
    return precisions_cholesky * precisions_cholesky


def _log_det_cholesky(precisions_cholesky: Tensor, covariance_type: str, d: int) -> Tensor:
    """log det L per component: (B, K), or (B,) for tied."""
    if covariance_type in ("full", "tied"):
        return torch.diagonal(precisions_cholesky, dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "diag":
        return precisions_cholesky.log().sum(-1)
    return d * precisions_cholesky.log()


def _log_prob_coefficients(means: Tensor, precisions_cholesky: Tensor, covariance_type: str) -> tuple[Tensor, Tensor]:
    """Coefficients (A (B, K, F), c (B, K)) with log N(x | mu_k, Sigma_k) = A_k . phi(x) + c_k."""
    b, k, d = means.shape
    precision = _precision_matrices(precisions_cholesky, covariance_type)
    if covariance_type == "tied":
        precision = precision.unsqueeze(1).expand(b, k, d, d)
    if covariance_type in ("full", "tied"):
        rows, cols = _triu_indices(d, means.device)
        # x'Px = sum_i P_ii x_i^2 + sum_{i<j} 2 P_ij x_i x_j
        quad = precision[..., rows, cols] * torch.where(rows == cols, 1.0, 2.0).to(means.dtype)
        p_mu = (precision @ means.unsqueeze(-1)).squeeze(-1)  # (B, K, D)
    elif covariance_type == "diag":
        quad = precision
        p_mu = precision * means
    else:  # spherical: P = p I
        quad = precision.unsqueeze(-1)
        p_mu = precision.unsqueeze(-1) * means
    mahalanobis_const = (p_mu * means).sum(-1)  # mu'P mu, (B, K)
    log_det = _log_det_cholesky(precisions_cholesky, covariance_type, d)
    if covariance_type == "tied":
        log_det = log_det.unsqueeze(-1)
    coefficients = torch.cat([-0.5 * quad, p_mu], dim=-1)  # (B, K, F)
    constant = -0.5 * (d * LOG_2PI + mahalanobis_const) + log_det
    return coefficients, constant


def _log_joint(features: Tensor, coefficients: Tensor, constant: Tensor) -> Tensor:
    """A @ phi + c: (B, F, N), (B, K, F), (B, K) -> (B, K, N)."""
    return torch.baddbmm(constant.unsqueeze(-1), coefficients, features)


def _exp_floor(dtype: torch.dtype) -> float:
    """The least argument the E-step passes to ``exp``: log of the dtype's smallest normal
    number, plus 10 (-77.3 in float32, -698.4 in float64).

    With well-separated components most ``a_k - max_k a_k`` are far below it, and ``exp`` of
    such arguments (results subnormal or 0) is 10-15x slower on x86 CPUs than of ordinary
    ones (docs/benchmarks.md, "EM at scale"). A responsibility of ``e**10 * tiny / K`` (3e-34
    / K in float32) instead of less changes no sum and no log-likelihood, and stays a normal
    number after the division by the K terms' sum, so the argument is clamped there.
    """
    return math.log(torch.finfo(dtype).tiny) + 10.0


def _normalise_(log_joint: Tensor) -> tuple[Tensor, Tensor]:
    """Responsibilities and log-likelihood from log w_k + log N(x | k), in place.

    Log-sum-exp over K (dim 1) with the max subtracted first (no overflow, eq.
    ``log sum_k exp(a_k) = m + log sum_k exp(a_k - m)``); the exponentials it needs are
    reused as the responsibilities, so the (B, K, N) tensor is overwritten, not copied.
    Exponents are clamped at :func:`_exp_floor` (no subnormals: same sums, much faster).

    Returns:
        ``(resp (B, K, N), log_likelihood (B, N))``.
    """
    peak = log_joint.amax(1, keepdim=True)
    resp = log_joint.sub_(peak).clamp_min_(_exp_floor(log_joint.dtype)).exp_()
    total = resp.sum(1, keepdim=True)
    resp.div_(total)
    return resp, (peak + total.log()).squeeze(1)


def estimate_log_prob(
    x: Tensor, means: Tensor, precisions_cholesky: Tensor, covariance_type: CovarianceType = "full"
) -> Tensor:
    """Log-density of every sample under every component, log N(x_n | mu_k, Sigma_k).

    Args:
        x: samples, ``(B, N, D)`` float.
        means: ``(B, K, D)``.
        precisions_cholesky: Cholesky factors of the precisions (shapes in the module doc).
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.

    Returns:
        ``(B, N, K)`` log-densities, same dtype as ``x``.

    Example:
        >>> x = torch.zeros(1, 4, 2)
        >>> means = torch.zeros(1, 1, 2)
        >>> prec = torch.eye(2).expand(1, 1, 2, 2)
        >>> estimate_log_prob(x, means, prec, "full")[0, 0, 0]  # -log(2 pi)
        tensor(-1.8379)
    """
    # Mahalanobis distances are translation invariant: centre on the components' mean so
    # the quadratic expansion subtracts numbers of the data's spread, not its offset.
    centre = means.mean(dim=1, keepdim=True)
    coefficients, constant = _log_prob_coefficients(means - centre, precisions_cholesky, covariance_type)
    features = _quadratic_features(x - centre, covariance_type)
    return _log_joint(features, coefficients, constant).mT


def estimate_log_resp(
    x: Tensor,
    weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: CovarianceType = "full",
) -> tuple[Tensor, Tensor]:
    """E-step: log responsibilities and per-sample log-likelihood.

    Args:
        x: ``(B, N, D)``.
        weights: ``(B, K)`` mixing proportions.
        means, precisions_cholesky, covariance_type: as in :func:`estimate_log_prob`.

    Returns:
        ``(log_resp (B, N, K), log_likelihood (B, N))`` where
        ``log_likelihood = logsumexp_k(log w_k + log N(x | k))``.

    Example:
        >>> log_resp, ll = estimate_log_resp(torch.randn(2, 10, 3), torch.full((2, 4), 0.25),
        ...     torch.randn(2, 4, 3), torch.ones(2, 4), "spherical")
        >>> log_resp.shape, ll.shape
        (torch.Size([2, 10, 4]), torch.Size([2, 10]))
    """
    weighted = estimate_log_prob(x, means, precisions_cholesky, covariance_type) + weights.log().unsqueeze(1)
    log_likelihood = torch.logsumexp(weighted, dim=-1)
    # log_softmax subtracts the max before normalising: far from the data, where weighted
    # is ~-1e17 in float32, log_likelihood rounds to the max and weighted - log_likelihood
    # gave log_resp = 0 (responsibility 1) for every component at once.
    return torch.log_softmax(weighted, dim=-1), log_likelihood


# ----------------------------------------------------------------------------------------
# M-step
# ----------------------------------------------------------------------------------------
def precisions_cholesky_from_covariances(covariances: Tensor, covariance_type: CovarianceType) -> tuple[Tensor, Tensor]:
    """Cholesky factors of the precision matrices, without a host sync.

    For full/tied: ``L = inv(chol(Sigma))'`` so that ``L L' = Sigma^-1`` (scikit-learn's
    ``_compute_precision_cholesky``). For diag/spherical: ``1 / sqrt(sigma^2)``.

    Returns:
        ``(precisions_cholesky, failed)``: factors shaped like ``covariances`` and a ``(B,)``
        bool tensor, true where a covariance was not positive definite. Callers check
        ``failed`` when they sync anyway.

    Example:
        >>> prec, failed = precisions_cholesky_from_covariances(4 * torch.eye(2)[None, None], "full")
        >>> prec[0, 0]
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]])
    """
    if covariance_type in ("full", "tied"):
        cov_chol, info = torch.linalg.cholesky_ex(covariances)
        eye = torch.eye(covariances.shape[-1], device=covariances.device, dtype=covariances.dtype)
        precisions_cholesky = torch.linalg.solve_triangular(cov_chol, eye.expand_as(cov_chol), upper=False).mT
        failed = info != 0
        if covariance_type == "full":
            failed = failed.any(-1)
        return precisions_cholesky, failed
    failed = (covariances <= 0).flatten(1).any(-1)
    return covariances.clamp_min(torch.finfo(covariances.dtype).tiny).rsqrt(), failed


class _Statistics(NamedTuple):
    """The M-step's sufficient statistics: sums over samples, weighted by ``w_n`` (1 without
    sample weights). Sums over chunks, tiles or processes add up field by field."""

    nk: Tensor  #: (B, K) sum_n w_n r_nk
    moments: Tensor  #: (B, K, F) sum_n w_n r_nk phi(x_n)
    log_likelihood: Tensor  #: (B,) sum_n w_n log p(x_n); zeros where no E-step made them


def _add_statistics(a: _Statistics | None, b: _Statistics) -> _Statistics:
    return b if a is None else _Statistics(*(u + v for u, v in zip(a, b)))


def _resp_statistics(features: Tensor, resp: Tensor, sample_weight: Tensor | None) -> _Statistics:
    """Statistics of given responsibilities: (B, F, N), (B, K, N), (B, N) -> _Statistics."""
    if sample_weight is not None:
        resp = resp * sample_weight.unsqueeze(1)
    moments = torch.bmm(resp, features.mT)  # (B, K, F): sum_n r_nk phi(x_n)
    return _Statistics(resp.sum(-1), moments, resp.new_zeros(resp.shape[0]))


#: the E-step's (B, K, tile) block holds at most about this many numbers (1 MiB in float32,
#: 2 MiB in float64): the memory an iteration needs beyond the features is bounded whatever N,
#: and the block stays in a core's L2 cache between the passes that make and reduce it, so
#: they do not go to memory (with several processes on one machine, they would otherwise
#: compete for the shared cache and memory bandwidth; docs/benchmarks.md "EM at scale").
#: Much smaller tiles cost more in per-tile calls than the cache saves.
_TILE_NUMBERS = 2**18
#: the same bound on a GPU, where each tile costs a few kernel launches and there is no
#: core's cache to stay in (16 MiB in float32, what tiles held on every device until 2^18
#: was measured better on CPU; not re-measured on a GPU)
_GPU_TILE_NUMBERS = 2**22


def _tile_size(b: int, k: int, device: torch.device) -> int:
    numbers = _TILE_NUMBERS if device.type == "cpu" else _GPU_TILE_NUMBERS
    return max(numbers // (b * k), 1024)


def _e_step_statistics(
    features: Tensor, sample_weight: Tensor | None, coefficients: Tensor, constant: Tensor
) -> _Statistics:
    """E-step fused with the M-step's sums: the statistics of the posterior responsibilities.

    The samples are processed in tiles of N (:func:`_tile_size`): each tile's log-joint
    ``A @ phi + c`` (B, K, tile) is normalised in place into responsibilities, weighted, and
    reduced at once to ``sum_n r_nk``, ``sum_n r_nk phi(x_n)`` (one matmul) and the weighted
    log-likelihood; the full (B, K, N) responsibilities never exist, and the features are
    read once per iteration from memory (twice from cache).

    Shape:
        - features: ``(B, F, N)``; sample_weight: ``(B, N)`` or None
        - coefficients: ``(B, K, F)``; constant: ``(B, K)`` (log w_k included)
        - output: :class:`_Statistics` ``(B, K)``, ``(B, K, F)``, ``(B,)``
    """
    n = features.shape[-1]
    tile = _tile_size(features.shape[0], coefficients.shape[1], features.device)
    total = None
    for start in range(0, n, tile):  # one tile when N is small; tiles of thousands of samples
        part = features[..., start : start + tile] if n > tile else features
        resp, log_likelihood = _normalise_(_log_joint(part, coefficients, constant))
        if sample_weight is not None:
            w = sample_weight[:, start : start + tile] if n > tile else sample_weight
            resp = resp.mul_(w.unsqueeze(1))
            log_likelihood = log_likelihood * w
        moments = torch.bmm(resp, part.mT)
        total = _add_statistics(total, _Statistics(resp.sum(-1), moments, log_likelihood.sum(1)))
    return total


def _unrolled_statistics(
    features: Tensor, sample_weight: Tensor | None, coefficients: Tensor, constant: Tensor
) -> _Statistics:
    """:func:`_e_step_statistics` written sample-wise, loops over K and F unrolled: every
    operation is element-wise over N or a sum over N, so that ``torch.compile`` makes the
    whole E-step and the M-step's sums one loop over the samples that reads each feature
    once and keeps the K log-joints, responsibilities and K (F + 1) + 1 sums in registers.

    Eager, it is slow (K F passes); compiled (``scripts/bench_roofline.py --mode em``), it is
    the fused kernel. Only for small K F (the unrolled graph has ~3 K F nodes).

    Shape:
        as :func:`_e_step_statistics`.
    """
    k, f = coefficients.shape[1:]
    phi = features.unbind(1)  # F (B, N)
    log_joint = []
    for j in range(k):  # log w_j + log N(x | j) = c_j + sum_f A_jf phi_f
        acc = constant[:, j, None] + coefficients[:, j, 0, None] * phi[0]
        for i in range(1, f):
            acc = acc + coefficients[:, j, i, None] * phi[i]
        log_joint.append(acc)
    peak = log_joint[0]
    for value in log_joint[1:]:
        peak = torch.maximum(peak, value)
    floor = _exp_floor(peak.dtype)
    exps = [(value - peak).clamp_min(floor).exp() for value in log_joint]  # log-sum-exp, max subtracted
    total = exps[0]
    for value in exps[1:]:
        total = total + value
    scale = total.reciprocal() if sample_weight is None else sample_weight / total
    log_likelihood = peak + total.log()
    if sample_weight is not None:
        log_likelihood = log_likelihood * sample_weight
    resp = [value * scale for value in exps]
    nk = torch.stack([r.sum(-1) for r in resp], 1)
    moments = torch.stack([torch.stack([(r * p).sum(-1) for p in phi], -1) for r in resp], 1)
    return _Statistics(nk, moments, log_likelihood.sum(-1))


@functools.cache
def _compiled_statistics() -> Any:
    """:func:`_unrolled_statistics` under ``torch.compile`` (one per process; shapes dynamic
    in N so that chunks and tiles of any size reuse it)."""
    options = {"cpp_wrapper": True} if not torch.cuda.is_available() else {}
    return torch.compile(_unrolled_statistics, fullgraph=True, dynamic=True, options=options)


def _statistics_function(compiled: bool) -> Any:
    """The E-step statistics function of a fit: the tiled matmuls, or the compiled loop."""
    return _compiled_statistics() if compiled else _e_step_statistics


def _params_from_statistics(
    stats: _Statistics, covariance_type: str, reg_covar: float, d: int
) -> tuple[Tensor, Tensor, Tensor]:
    """M-step: weights (B, K), means (B, K, D) and covariances from the statistics."""
    eps = torch.finfo(stats.nk.dtype).eps
    nk = stats.nk + 10 * eps  # (B, K); + 10 eps keeps empty components finite (sklearn)
    moments = stats.moments
    means = moments[..., -d:] / nk.unsqueeze(-1)
    second = moments[..., :-d]
    weights = nk / nk.sum(-1, keepdim=True)
    if covariance_type in ("full", "tied"):
        rows, cols = _triu_indices(d, moments.device)
        b, k = nk.shape
        scatter = second.new_zeros(b, k, d, d)
        scatter[..., rows, cols] = second
        scatter[..., cols, rows] = second
        if covariance_type == "full":
            # Sigma_k = E_k[x x'] - mu_k mu_k'  (weighted by r_nk)
            cov = scatter / nk[..., None, None] - means.unsqueeze(-1) * means.unsqueeze(-2)
        else:
            # Sigma = (sum_k sum_n r_nk x x' - sum_k N_k mu_k mu_k') / sum_k N_k
            outer = (nk[..., None, None] * means.unsqueeze(-1) * means.unsqueeze(-2)).sum(1)
            cov = (scatter.sum(1) - outer) / nk.sum(-1)[:, None, None]
        diagonal = torch.diagonal(cov, dim1=-2, dim2=-1)
        # Rounding in E[xx'] - mu mu' can make a collapsed component's variance slightly
        # negative: floor the diagonal at 0 before adding reg_covar.
        diagonal.clamp_(min=0).add_(reg_covar)
    elif covariance_type == "diag":
        cov = (second / nk.unsqueeze(-1) - means * means).clamp_min(0) + reg_covar
    else:
        cov = ((second[..., 0] / nk - (means * means).sum(-1)) / d).clamp_min(0) + reg_covar
    return weights, means, cov


def _m_step(
    features: Tensor,
    resp: Tensor,
    sample_weight: Tensor | None,
    covariance_type: str,
    reg_covar: float,
    d: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights (B, K), means (B, K, D) and covariances from responsibilities (B, K, N).

    ``features`` is phi(x), (B, F, N). Weighted sums over samples are one matmul.
    """
    return _params_from_statistics(_resp_statistics(features, resp, sample_weight), covariance_type, reg_covar, d)


# ----------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------
def _weighted_mean(x: Tensor, sample_weight: Tensor | None) -> Tensor:
    if sample_weight is None:
        return x.mean(1, keepdim=True)
    return (sample_weight.unsqueeze(-1) * x).sum(1, keepdim=True) / sample_weight.sum(1)[:, None, None]


def _range_resp(x: Tensor, sample_weight: Tensor | None, k: int) -> Tensor:
    """Hard responsibilities (B, K, N) from cutting [min, max] into K equal intervals.

    For D > 1 the cut is along the first principal axis of the (weighted, centred) data.
    """
    axis = None
    if x.shape[-1] > 1:
        w = torch.ones_like(x[..., 0]) if sample_weight is None else sample_weight
        axis = _principal_axis(_second_moment(x, w) / w.sum(1)[:, None, None])
    projection = _range_projection(x, axis)
    low, high = _range_bounds(projection, sample_weight)
    return _range_labels(projection, low, high, k)


def _second_moment(x: Tensor, w: Tensor) -> Tensor:
    """sum_n w_n x_n x_n': (B, N, D), (B, N) -> (B, D, D)."""
    return torch.einsum("bn,bni,bnj->bij", w, x, x)


def _principal_axis(cov: Tensor) -> Tensor:
    """The first principal axis (B, D) of covariances (B, D, D), with a fixed sign."""
    _, vectors = torch.linalg.eigh(cov)
    axis = vectors[..., -1]  # (B, D)
    # An eigenvector's sign is arbitrary and LAPACK (CPU) and cuSOLVER (CUDA) pick
    # differently, which would reverse the intervals and so the component order. Fix it
    # as scikit-learn's svd_flip does: the largest-magnitude coordinate is positive.
    largest = axis.gather(-1, axis.abs().argmax(-1, keepdim=True))
    return torch.where(largest < 0, -axis, axis)


def _range_projection(x: Tensor, axis: Tensor | None) -> Tensor:
    """(B, N): the samples along ``axis`` (B, D), or the one feature when None (D = 1)."""
    return x[..., 0] if axis is None else (x @ axis.unsqueeze(-1)).squeeze(-1)


def _range_bounds(projection: Tensor, sample_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """(low, high) (B, 1) of the projections of the samples of positive weight."""
    if sample_weight is not None:
        present = sample_weight > 0
        low = projection.masked_fill(~present, math.inf).amin(1, keepdim=True)
        high = projection.masked_fill(~present, -math.inf).amax(1, keepdim=True)
        return low, high
    return projection.amin(1, keepdim=True), projection.amax(1, keepdim=True)


def _range_labels(projection: Tensor, low: Tensor, high: Tensor, k: int) -> Tensor:
    """One-hot (B, K, N) of the interval of [low, high] cut in K that each projection is in."""
    width = (high - low).clamp_min(torch.finfo(projection.dtype).tiny)
    labels = ((projection - low) / width * k).floor().clamp(0, k - 1).long()
    return nn.functional.one_hot(labels, k).to(projection.dtype).mT


def _squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """|x_n - c_k|^2: (B, N, D), (B, K, D) -> (B, N, K), clamped at 0."""
    cross = torch.baddbmm((centres * centres).sum(-1).unsqueeze(1), x, centres.mT, alpha=-2)
    return (cross + (x * x).sum(-1, keepdim=True)).clamp_min(0)


def _kmeans_plusplus(x: Tensor, w: Tensor, k: int, generator: Generators, n_local_trials: int) -> Tensor:
    """k-means++ seeds: indices (B, K) into the N samples.

    The first seed is drawn with probability proportional to the weight ``w`` (B, N), each
    next one proportional to ``w * D(x)^2``, D the distance to the nearest seed so far
    (Arthur & Vassilvitskii 2007). With ``n_local_trials`` L > 1 this is scikit-learn's
    greedy variant (``_kmeans_plusplus``): L candidates are drawn and the one that most
    lowers the potential ``sum_n w_n D(x_n)^2`` is kept; scikit-learn uses L = 2 + log K.
    Weight c on a sample draws it as c repeated rows would be drawn.
    """
    b, n, d = x.shape
    rows = torch.arange(b, device=x.device)
    first = _draw(w, 1, generator=generator).squeeze(1)
    picks = [first]
    closest = ((x - x[rows, first].unsqueeze(1)) ** 2).sum(-1)  # (B, N)
    for _ in range(1, k):  # K is small; the loop is over components, never samples
        score = w * closest
        # All remaining mass at distance 0 (fewer distinct points than K): fall back to w.
        score = torch.where(score.sum(1, keepdim=True) > 0, score, w)
        if n_local_trials == 1:
            pick = _draw(score, 1, generator=generator).squeeze(1)
            closest = torch.minimum(closest, ((x - x[rows, pick].unsqueeze(1)) ** 2).sum(-1))
        else:
            candidates = _draw(score, n_local_trials, generator=generator)
            points = x.gather(1, candidates.unsqueeze(-1).expand(b, n_local_trials, d))  # (B, L, D)
            # min(D(x)^2, |x - candidate|^2) for every candidate: (B, L, N)
            trial = torch.minimum(closest.unsqueeze(1), _squared_distances(x, points).mT)
            best = (trial * w.unsqueeze(1)).sum(-1).argmin(-1)  # lowest potential, (B,)
            pick = candidates[rows, best]
            closest = trial[rows, best]
        picks.append(pick)
    return torch.stack(picks, 1)


def _lloyd(x: Tensor, w: Tensor, centres: Tensor, max_iter: int, tol: Tensor | None, check_every: int = 4) -> Tensor:
    """Lloyd's k-means iterations from ``centres`` (B, K, D); the final centres (B, K, D).

    Each iteration labels every sample with its nearest centre and moves each centre to the
    weighted mean of its samples (a centre with no samples stays). With ``tol`` (B,) a
    problem stops as scikit-learn's ``_kmeans_single_lloyd`` does: when the labels did not
    change (strict convergence), or when the squared centre shift ``sum_k |c_k' - c_k|^2``
    is at most ``tol``; label the samples by the nearest final centre. Without ``tol``
    it runs exactly ``max_iter`` iterations and never syncs with the host.
    """
    b, k = centres.shape[:2]
    done = torch.zeros(b, dtype=torch.bool, device=x.device)
    previous: Tensor | None = None
    for iteration in range(max_iter):
        labels = _squared_distances(x, centres).argmin(-1)
        resp = nn.functional.one_hot(labels, k).to(x.dtype)  # (B, N, K)
        mass = torch.bmm(resp.mT, w.unsqueeze(-1))  # (B, K, 1)
        sums = torch.bmm(resp.mT, w.unsqueeze(-1) * x)
        moved = torch.where(mass > 0, sums / mass.clamp_min(torch.finfo(x.dtype).tiny), centres)
        if tol is None:
            centres = moved
            continue
        shift = ((moved - centres) ** 2).sum((1, 2))
        centres = torch.where(done[:, None, None], centres, moved)
        stop = shift <= tol
        if previous is not None:
            stop = stop | (labels == previous).all(1)
        done = done | stop
        previous = labels
        if (iteration + 1) % check_every == 0 and bool(done.all()):
            break
    return centres


def _seed_resp(w: Tensor, seeds: Tensor, sample_weight: Tensor | None) -> Tensor:
    """Responsibilities (B, K, N) that make component k the single sample ``seeds[:, k]``.

    As scikit-learn's ``k-means++`` and ``random_from_data`` inits: mean = the sample,
    covariance = ``reg_covar``. The one-hot entry is 1 / weight so that the seed counts as
    one row, as it does among repeated rows (initial weights 1/K, whatever its weight).
    """
    b, n = w.shape
    resp = w.new_zeros(b, seeds.shape[1], n)
    value = torch.ones_like(seeds, dtype=w.dtype) if sample_weight is None else 1 / w.gather(1, seeds)
    return resp.scatter_(2, seeds.unsqueeze(-1), value.unsqueeze(-1))


def _initial_resp(x: Tensor, sample_weight: Tensor | None, k: int, init_params: str, generator: Generators) -> Tensor:
    """Responsibilities (B, K, N) to start EM from (``init_params`` in fit_gaussian_mixture)."""
    if init_params == "range":
        return _range_resp(x, sample_weight, k)
    w = torch.ones_like(x[..., 0]) if sample_weight is None else sample_weight
    if init_params in ("kmeans", "kmeans++"):
        return _nearest_resp(x, _kmeans_centres(x, w, k, init_params, generator))
    return _seed_or_random_resp(x, w, sample_weight, k, init_params, generator)


def _nearest_resp(x: Tensor, centres: Tensor) -> Tensor:
    """One-hot responsibilities (B, K, N) of the nearest of ``centres`` (B, K, D)."""
    labels = _squared_distances(x, centres).argmin(-1)
    return nn.functional.one_hot(labels, centres.shape[1]).to(x.dtype).mT


def _kmeans_centres(x: Tensor, w: Tensor, k: int, init_params: str, generator: Generators) -> Tensor:
    """The k-means centres (B, K, D) of ``init_params`` "kmeans" or "kmeans++" (see
    :func:`fit_gaussian_mixture`); ``w`` (B, N) the sample weights (ones without)."""
    if init_params == "kmeans":
        # scikit-learn's: KMeans(n_clusters=K, n_init=1), i.e. greedy k-means++ seeds, then
        # Lloyd to convergence (max_iter=300, tol=1e-4 times the mean per-feature variance;
        # x is centred on its weighted mean, so that variance is mean(w x^2) / mean(w)).
        variance = (w.unsqueeze(-1) * x * x).sum(1) / w.sum(1, keepdim=True)  # (B, D)
        trials, max_iter, tol = 2 + int(math.log(k)), 300, 1e-4 * variance.mean(-1)
    else:
        # torchgmm's own: plain k-means++ seeds and 10 Lloyd iterations, with no host sync.
        trials, max_iter, tol = 1, 10, None
    seeds = _kmeans_plusplus(x, w, k, generator, n_local_trials=trials)
    centres = x.gather(1, seeds.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return _lloyd(x, w, centres, max_iter=max_iter, tol=tol)


def _seed_or_random_resp(
    x: Tensor, w: Tensor, sample_weight: Tensor | None, k: int, init_params: str, generator: Generators
) -> Tensor:
    """Responsibilities (B, K, N) of the inits "k-means++", "random_from_data" and "random"."""
    if init_params == "k-means++":
        seeds = _kmeans_plusplus(x, w, k, generator, n_local_trials=2 + int(math.log(k)))
        return _seed_resp(w, seeds, sample_weight)
    if init_params == "random_from_data":
        # K distinct samples, uniformly for unweighted data as scikit-learn; with weights,
        # each next draw proportional to the weight among the samples not yet drawn.
        short = (w > 0).sum(1) < k
        if bool(short.any()):
            raise ValueError(
                f"init_params='random_from_data' draws n_components={k} distinct samples, but "
                f"problems {torch.nonzero(short).flatten().tolist()[:10]} have fewer samples of "
                f"positive weight; use another `init_params`."
            )
        seeds = _draw(w, k, replacement=False, generator=generator)
        return _seed_resp(w, seeds, sample_weight)
    resp = _rand((x.shape[0], x.shape[1], k), generator, device=x.device, dtype=x.dtype)
    return (resp / resp.sum(-1, keepdim=True)).mT


#: torch.multinomial refuses more categories than this
_MULTINOMIAL_LIMIT = 2**24


def _rand(shape: tuple[int, ...], generator: Generators, **options: Any) -> Tensor:
    """``torch.rand(shape)``; with a sequence of B generators, row b (of B = ``shape[0]``)
    from the b-th, as that row alone would be."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, **options)
    return torch.cat([torch.rand((1, *shape[1:]), generator=g, **options) for g in generator])


def _draw(weights: Tensor, n_draws: int, *, replacement: bool = True, generator: Generators = None) -> Tensor:
    """Indices drawn with probability proportional to ``weights``, per row.

    ``torch.multinomial`` up to its limit of 2**24 samples (N); above it, the same
    distributions by other means: with replacement, the inverse CDF (uniform draws located
    in the cumulative weights, in float64, by ``searchsorted``); without, the
    Efraimidis-Spirakis keys ``log(u) / w`` (the ``n_draws`` largest). Samples of weight 0
    are never drawn.

    A sequence of B generators draws each row with its own (as that row alone would be).

    Shape:
        - weights: ``(B, N)`` non-negative, each row with positive weight
        - output: ``(B, n_draws)`` int64
    """
    if not (generator is None or isinstance(generator, torch.Generator)):
        return torch.cat(
            [_draw(weights[i : i + 1], n_draws, replacement=replacement, generator=g) for i, g in enumerate(generator)]
        )
    if weights.shape[-1] <= _MULTINOMIAL_LIMIT:
        return torch.multinomial(weights, n_draws, replacement=replacement, generator=generator)
    w = weights.to(torch.float64)
    if not replacement:
        keys = torch.rand(w.shape, generator=generator, device=w.device, dtype=torch.float64).log() / w
        return keys.topk(n_draws, dim=-1).indices  # weight 0: key -inf, never among the largest
    u = torch.rand(w.shape[0], n_draws, generator=generator, device=w.device, dtype=torch.float64)
    cdf = w.cumsum(-1)
    # u * total lies in [cdf[i - 1], cdf[i]) with probability w_i / total: index i
    picks = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return picks.clamp_max(w.shape[-1] - 1)


def _covariance_shape(covariance_type: str, b: int, k: int, d: int) -> tuple[int, ...]:
    return {
        "full": (b, k, d, d),
        "tied": (b, d, d),
        "diag": (b, k, d),
        "spherical": (b, k),
    }[covariance_type]


def _covariances_from_precisions_cholesky(precisions_cholesky: Tensor, covariance_type: str) -> Tensor:
    if covariance_type in ("full", "tied"):
        return torch.cholesky_inverse(precisions_cholesky.mT, upper=True)
    return precisions_cholesky.pow(-2)


def _precisions_cholesky_from_precisions(precisions: Tensor, covariance_type: str) -> Tensor:
    """Cholesky factors of ``precisions_init``, which must be symmetric positive definite
    (full/tied) or positive (diag/spherical), as scikit-learn's ``_check_precisions``.

    One host sync covers all the checks; a zero diag precision used to give an all-NaN fit
    and a negative definite one a raw ``_LinAlgError``.
    """
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(precisions)
        not_positive = info != 0 if info.ndim == 1 else (info != 0).any(-1)  # (B,); (B, K) for full
        # cholesky reads only the lower triangle: an asymmetric matrix would pass unnoticed.
        asymmetric = ~torch.isclose(precisions, precisions.mT, rtol=1e-5, atol=1e-8).flatten(1).all(-1)
        if bool((not_positive | asymmetric).any()):
            problems = torch.nonzero(not_positive | asymmetric).flatten().tolist()
            raise ValueError(
                f"`precisions_init` must be symmetric positive definite for "
                f"covariance_type={covariance_type!r}; it is not for problems {problems[:10]}."
            )
        return chol
    if bool((precisions <= 0).any()):
        problems = torch.nonzero((precisions <= 0).flatten(1).any(-1)).flatten().tolist()
        raise ValueError(
            f"`precisions_init` must be positive for covariance_type={covariance_type!r}; "
            f"it has values <= 0 for problems {problems[:10]}."
        )
    return precisions.sqrt()


def _check_weights_init(weights: Tensor) -> None:
    """Non-negative and summing to 1, as scikit-learn's ``_check_weights``.

    The sum may miss 1 by float32 rounding (1e-4, far above K float32 roundings); the fit
    renormalises, so this only catches weights that were never normalised.
    """
    sums = weights.sum(-1)
    if bool(((weights < 0).any(-1) | ((sums - 1).abs() > 1e-4)).any()):
        if bool((weights < 0).any()):
            raise ValueError(f"`weights_init` must be non-negative, got min {float(weights.min()):.3g}.")
        worst = float(sums[(sums - 1).abs().argmax()])
        raise ValueError(f"`weights_init` must sum to 1 for every problem, got a sum of {worst:.6g}.")


# ----------------------------------------------------------------------------------------
# EM
# ----------------------------------------------------------------------------------------
@torch.no_grad()  # EM is not differentiated through: data with requires_grad must not keep its graph
def fit_gaussian_mixture(
    x: Tensor | Chunks,
    n_components: int,
    *,
    sample_weight: Tensor | None = None,
    covariance_type: CovarianceType = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    init_params: InitMethod = "kmeans",
    weights_init: Tensor | None = None,
    means_init: Tensor | None = None,
    precisions_init: Tensor | None = None,
    generator: Generators = None,
    check_every: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    process_group: Any = None,
    compile: bool = False,  # noqa: A002 - the flag's natural name, as torch.compile
) -> GaussianMixtureFit:
    """Fit B independent Gaussian mixtures by EM in one batched computation.

    Each EM iteration is an E-step in log space (log-sum-exp over components) and an
    M-step with sample weights, exactly as scikit-learn's ``GaussianMixture`` (same
    ``reg_covar``, same ``tol`` test on the change of the mean log-likelihood, same order
    of operations). Every problem stops on its own: once converged its parameters stop
    changing while the others go on. The host reads the stopping test only every
    ``check_every`` iterations.

    Data in memory or in chunks. ``x`` may instead be a chunked source, streamed once per
    pass (:mod:`torchgmm.mixture_chunked`): a list of chunks, a ``DataLoader``, or a
    zero-argument callable returning an iterator; each chunk an ``(N_i, D)`` (or
    ``(B, N_i, D)``) tensor or an ``(x, sample_weight)`` pair. Each EM iteration then sums the
    chunks' sufficient statistics, so the fit equals the in-memory fit of the concatenated
    chunks up to rounding (float64: ~1e-12) with the same init. A first pass finds the mean the
    data are centred on and checks every chunk (errors name the chunk's index). Inits over
    chunks: ``"range"`` exactly as in memory (three passes); the k-means family on a uniform
    sample of at most ``mixture_chunked.INIT_SAMPLE_SIZE`` (131,072) samples, then one
    labelling pass (all samples when N is at most that: then equal to the in-memory init with
    the same generator); ``"random"`` draws the responsibilities chunk by chunk.

    Processes. With ``process_group`` (a ``torch.distributed`` group; gloo on CPU, NCCL on
    CUDA) each rank passes its own shard (a tensor or chunks): the statistics of every pass are
    all-reduced, the init is made on rank 0 and broadcast, and every rank returns the same
    fit, equal to a one-process fit of the shards concatenated in rank order (``"random"``
    aside, whose responsibilities each rank draws for its own shard).

    Args:
        x: data, ``(B, N, D)`` or ``(N, D)``, D >= 1, or a chunked source (above).
            float32 and float64 are fitted as
            given; float16 and bfloat16 are fitted in float32 (no half-precision Cholesky,
            and too few digits for the squared features); integer and bool data are cast to
            the default dtype; complex data are refused. The results have the dtype fitted in.
        n_components: K >= 1.
        sample_weight: ``(B, N)`` or ``(N,)`` non-negative weights; a histogram's counts
            are weights, and weight c on a sample equals repeating it c times.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol: convergence threshold on the change of the weighted mean log-likelihood.
            ``tol=0`` runs exactly ``max_iter`` iterations.
        reg_covar: added to the covariance diagonals (variance floor).
        max_iter: maximum EM iterations.
        init_params: how the starting responsibilities are made. scikit-learn's names
            mean scikit-learn's algorithms (with torch's random draws, so not its numbers):
            ``"kmeans"`` (default: greedy k-means++ seeds, then Lloyd iterations until the
            labels stop changing or the centres move less than scikit-learn's ``KMeans``
            tolerance, at most 300; hard labels), ``"k-means++"`` (the greedy k-means++
            seeds alone: component k is one sample, covariance ``reg_covar``),
            ``"random_from_data"`` (K distinct samples drawn at random, likewise) and
            ``"random"`` (uniform random responsibilities, normalised). torchgmm's own:
            ``"range"`` (cut [min, max] into K equal intervals, along the first principal
            axis when D > 1, oriented so that its largest-magnitude coordinate is positive
            (the same intervals on every device), and take each interval's weighted mean,
            variance and share; deterministic) and ``"kmeans++"`` (plain k-means++ seeds and
            exactly 10 Lloyd iterations, no host sync). Weights draw samples as repeated
            rows would be drawn; a one-sample component counts as one row whatever its weight.
        weights_init, means_init, precisions_init: explicit starting parameters,
            ``(B, K)``/``(K,)``, ``(B, K, D)``/``(K, D)`` and precisions (not their
            Cholesky factors) shaped like the covariances, with or without the B dim.
            Anything not given comes from ``init_params`` exactly as in scikit-learn's
            ``_initialize``: weights, means and covariances are computed from the
            ``init_params`` responsibilities, then the given ones replace theirs. So with
            ``means_init`` alone, component k gets ``means_init[k]`` but the weight and
            covariance (about its own mean) of the k-th k-means cluster, whose numbering is
            random. As there, weights must be non-negative and sum to 1, and precisions must
            be symmetric positive definite (full/tied) or positive (diag/spherical).
        generator: ``torch.Generator`` on x's device, for reproducible seeding; or a
            sequence of B, one per problem, whose random draws (seeds, samples, random
            responsibilities) are then each problem's alone, whatever else is in the batch.
        check_every: host syncs for the stopping test happen every this many iterations.
        device, dtype: where and in which precision to fit (default: the data's, i.e. the
            first chunk's). Chunks on the CPU reach a CUDA ``device`` through pinned memory,
            without blocking.
        process_group: a ``torch.distributed`` process group to fit across (above), or None.
        compile: run each iteration's E-step and M-step sums as one ``torch.compile``d loop
            over the samples (:func:`_unrolled_statistics`): several times faster on CPU for
            small K and D (``scripts/bench_roofline.py --mode em``), but the first fit of a
            shape compiles for tens of seconds (needs a C++ compiler on CPU), the results
            differ from the default engine by rounding, and the unrolled graph grows as
            K D^2: meant for K (D (D + 3) / 2) up to a few hundred.

    Returns:
        :class:`GaussianMixtureFit`, every field batched (B = 1 for ``(N, D)`` input);
        ``lower_bounds`` ``(B, T)`` holds the bound after each iteration, NaN after a problem
        stopped (T = the most iterations any problem ran).

    Raises:
        ValueError: bad shapes, NaN/inf in the data, data too spread out for the dtype,
            bad weights or options, or a covariance that is not positive definite
            (increase ``reg_covar``).
        TypeError: ``x`` is not a real tensor, or an option has the wrong type.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(500, 1, generator=g) - 4, torch.randn(500, 1, generator=g) + 4])
        >>> fit = fit_gaussian_mixture(x, 2, init_params="range")
        >>> fit.means.squeeze().round()
        tensor([-4.,  4.])
        >>> chunks = [x[:300], x[300:]]  # the same fit, streamed in two chunks
        >>> streamed = fit_gaussian_mixture(chunks, 2, init_params="range")
        >>> bool(torch.allclose(streamed.means, fit.means, rtol=1e-5))
        True
    """
    check_positive_int(n_components, "n_components")
    # max_iter=0 returns the initial parameters (scikit-learn allows it too).
    check_positive_int(max_iter, "max_iter", minimum=0)
    check_positive_int(check_every, "check_every")
    check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    check_choice(init_params, "init_params", INIT_METHODS)
    tol = check_real(tol, "tol", minimum=0)
    reg_covar = check_real(reg_covar, "reg_covar", minimum=0)
    options = _EMOptions(
        n_components, covariance_type, tol, reg_covar, max_iter, init_params, check_every, bool(compile)
    )
    if process_group is not None or (not isinstance(x, Tensor) and is_chunked_source(x)):
        from torchgmm.mixture_chunked import (
            fit_chunked,  # chunks and processes: their own module
        )

        return fit_chunked(
            x,
            options,
            sample_weight=sample_weight,
            weights_init=weights_init,
            means_init=means_init,
            precisions_init=precisions_init,
            generator=generator,
            device=device,
            dtype=dtype,
            process_group=process_group,
        )[0]
    if device is not None or dtype is not None:
        check_tensor(x, "x")
        x = x.to(device=device, dtype=dtype)
    x, sample_weight = _batched_data(x, sample_weight)
    b, n, d = x.shape
    k = n_components
    if n < k:
        raise ValueError(f"`x` has N={n} samples per problem, fewer than n_components={k}.")
    generator = _checked_generators(generator, b, x.device)
    weights0, means0, prec_chol0 = _given_parameters(weights_init, means_init, precisions_init, x, covariance_type, k)

    # Centre the data (see the module docstring); means live in centred coordinates.
    given = x
    shift = _weighted_mean(x, sample_weight)
    x = x - shift
    _check_centred(x, given)
    features = _quadratic_features(x, covariance_type)

    # Initialisation, following sklearn's BaseMixture._initialize: parameters from the
    # init responsibilities, then overridden by whatever was given explicitly.
    initial = None
    if weights0 is None or means0 is None or prec_chol0 is None:
        resp = _initial_resp(x, sample_weight, k, init_params, generator)
        initial = _m_step(features, resp, sample_weight, covariance_type, reg_covar, d)
    weights, means, cov, prec_chol, failed = _starting_parameters(
        initial, weights0, means0, prec_chol0, shift, covariance_type
    )
    _raise_if_failed(failed)

    total = x.new_full((b,), n) if sample_weight is None else sample_weight.sum(1)
    working = {"features": features, "sample_weight": sample_weight}

    e_step = _statistics_function(options.compile)

    def statistics(coefficients: Tensor, constant: Tensor) -> _Statistics:
        return e_step(working["features"], working["sample_weight"], coefficients, constant)

    def shrink(keep: Tensor) -> None:
        working["features"] = working["features"][keep]
        if working["sample_weight"] is not None:
            working["sample_weight"] = working["sample_weight"][keep]

    fit = _run_em(statistics, total, (weights, means, cov, prec_chol), failed, options, shrink=shrink)
    return fit._replace(means=fit.means + shift)


class _EMOptions(NamedTuple):
    """The checked scalar options of :func:`fit_gaussian_mixture`."""

    n_components: int
    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    init_params: str
    check_every: int
    compile: bool = False  #: the E-step statistics as one compiled loop (_unrolled_statistics)


def is_chunked_source(x: object) -> bool:
    """Whether :func:`fit_gaussian_mixture` streams ``x`` as chunks rather than fitting a tensor:
    a zero-argument callable or a re-iterable that is not an array (lists, DataLoaders).

    Example:
        >>> is_chunked_source(torch.zeros(3, 2)), is_chunked_source([torch.zeros(3, 2)])
        (False, True)
    """
    if isinstance(x, Tensor) or hasattr(x, "__array__") or isinstance(x, (str, bytes)):
        return False
    return callable(x) or hasattr(x, "__iter__")


def _checked_generators(generator: Generators, b: int, device: torch.device) -> Generators:
    check_generators(generator, b, device)
    if not (generator is None or isinstance(generator, torch.Generator)):
        return list(generator)
    return generator


def _given_parameters(
    weights_init: Tensor | None,
    means_init: Tensor | None,
    precisions_init: Tensor | None,
    like: Tensor,
    covariance_type: str,
    k: int,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Checked explicit starting parameters: (weights (B, K), means (B, K, D), precisions'
    Cholesky factors) on ``like``'s (B, N, D) device and dtype, each None if not given."""
    b, _, d = like.shape
    weights0 = _batched_init(weights_init, "weights_init", 2, like)
    means0 = _batched_init(means_init, "means_init", 3, like)
    precisions0 = _batched_init(
        precisions_init, "precisions_init", len(_covariance_shape(covariance_type, b, k, d)), like
    )
    prec_chol0 = None
    if weights0 is not None:
        _check_param_shape(weights0, "weights_init", (b, k))
        check_finite(weights0, "weights_init")
        _check_weights_init(weights0)
    if means0 is not None:
        _check_param_shape(means0, "means_init", (b, k, d))
        check_finite(means0, "means_init")
    if precisions0 is not None:
        _check_param_shape(precisions0, "precisions_init", _covariance_shape(covariance_type, b, k, d))
        check_finite(precisions0, "precisions_init")
        prec_chol0 = _precisions_cholesky_from_precisions(precisions0, covariance_type)
    return weights0, means0, prec_chol0


def _starting_parameters(
    initial: tuple[Tensor, Tensor, Tensor] | None,
    weights0: Tensor | None,
    means0: Tensor | None,
    prec_chol0: Tensor | None,
    shift: Tensor,
    covariance_type: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(weights, means, cov, precisions_cholesky, failed (B,)) to start EM from: the init's
    ``initial`` (weights, means, cov), overridden by the given ones (means moved by ``shift``
    into centred coordinates), as scikit-learn's ``_initialize``."""
    if initial is not None:
        weights, means, cov = initial
    if weights0 is not None:
        weights = weights0 / weights0.sum(-1, keepdim=True)
    if means0 is not None:
        means = means0 - shift
    if prec_chol0 is not None:
        prec_chol = prec_chol0
        cov = _covariances_from_precisions_cholesky(prec_chol, covariance_type)
        failed = torch.zeros(prec_chol.shape[0], dtype=torch.bool, device=prec_chol.device)
    else:
        prec_chol, failed = precisions_cholesky_from_covariances(cov, covariance_type)
    return weights, means, cov, prec_chol, failed


def _run_em(
    statistics: Any,
    total: Tensor,
    parameters: tuple[Tensor, Tensor, Tensor, Tensor],
    failed: Tensor,
    options: _EMOptions,
    shrink: Any = None,
) -> GaussianMixtureFit:
    """The EM iterations from ``parameters`` (weights, means, cov, precisions_cholesky), in the
    centred coordinates of the data.

    ``statistics(coefficients (B', K, F), constant (B', K))`` returns the :class:`_Statistics`
    of the current working set of B' problems (all B until ``shrink`` is called), summed over
    all the data (in memory, over chunks, over processes); ``total`` (B,) is each problem's
    sample size (its total weight), so the bound is the weighted mean log-likelihood.
    ``shrink(keep)`` (or None: the working set never shrinks) drops the problems not in
    ``keep`` from what ``statistics`` reads.
    """
    covariance_type, tol, reg_covar, max_iter, check_every = (
        options.covariance_type,
        options.tol,
        options.reg_covar,
        options.max_iter,
        options.check_every,
    )
    weights, means, cov, prec_chol = parameters
    b, _, d = means.shape
    device = means.device
    lower_bound = means.new_full((b,), -math.inf)
    n_iter = torch.zeros(b, dtype=torch.long, device=device)
    converged = torch.zeros(b, dtype=torch.bool, device=device)
    active = torch.ones(b, dtype=torch.bool, device=device)
    overflowed = torch.zeros(b, dtype=torch.bool, device=device)
    # Rows of the working set -> problems; None while every problem is in it. When most
    # problems have converged, the working set shrinks to the active ones (at a check, when
    # the host syncs anyway), so a batch costs the sum of its problems' iterations rather
    # than B times the slowest one's.
    rows: Tensor | None = None
    results: list[Tensor] | None = None
    # The bound after each iteration, NaN for problems that had stopped (trimmed at the end).
    lower_bounds = means.new_full((b, max_iter), math.nan)
    for iteration in range(max_iter):
        # E-step: log w_k + log N(x | k) as one matmul of the features (module docstring),
        # fused with the sums the M-step needs.
        coefficients, constant = _log_prob_coefficients(means, prec_chol, covariance_type)
        stats = statistics(coefficients, constant + weights.log())
        new_bound = stats.log_likelihood / total
        # M-step.
        new_weights, new_means, new_cov = _params_from_statistics(stats, covariance_type, reg_covar, d)
        new_prec_chol, new_failed = precisions_cholesky_from_covariances(new_cov, covariance_type)
        # Problems that converged earlier keep their parameters.
        weights = _where_active(active, new_weights, weights)
        means = _where_active(active, new_means, means)
        cov = _where_active(active, new_cov, cov)
        prec_chol = _where_active(active, new_prec_chol, prec_chol)
        failed = failed | (active & new_failed)
        # A non-finite bound means a squared Mahalanobis distance overflowed (inf - inf in
        # the expansion): flag it here, read it at the next check, with no extra sync.
        overflowed = overflowed | (active & ~torch.isfinite(new_bound))
        change = new_bound - lower_bound
        lower_bound = torch.where(active, new_bound, lower_bound)
        working = slice(None) if rows is None else rows
        lower_bounds[working, iteration] = torch.where(active, new_bound, math.nan)
        n_iter = n_iter + active.long()
        converged = converged | (active & (change.abs() < tol))
        active = active & ~converged
        if (iteration + 1) % check_every == 0 or iteration + 1 == max_iter:
            _raise_if_failed(failed, rows, overflowed, means.dtype)
            n_active = int(active.sum())
            if n_active == 0:
                break
            if shrink is not None and n_active <= active.numel() // 2:
                state = (weights, means, cov, prec_chol, lower_bound, n_iter, converged)
                results = _store(results, rows, state)
                keep = torch.nonzero(active).squeeze(1)
                rows = keep if rows is None else rows[keep]
                weights, means, cov, prec_chol, lower_bound, n_iter, converged = (t[keep] for t in state)
                active, failed, overflowed, total = active[keep], failed[keep], overflowed[keep], total[keep]
                shrink(keep)
    state = (weights, means, cov, prec_chol, lower_bound, n_iter, converged)
    weights, means, cov, prec_chol, lower_bound, n_iter, converged = _store(results, rows, state)
    # columns after every problem had stopped (up to the next check) are all NaN: dropped
    lower_bounds = lower_bounds[:, : int(n_iter.max()) if max_iter else 0].contiguous()
    return GaussianMixtureFit(weights, means, cov, prec_chol, lower_bound, n_iter, converged, lower_bounds)


def _store(results: list[Tensor] | None, rows: Tensor | None, state: tuple[Tensor, ...]) -> list[Tensor]:
    """Write the working set's per-problem tensors into the full results at ``rows``."""
    if rows is None:
        return list(state)
    for full, part in zip(results, state):
        full[rows] = part
    return results


def _where_active(active: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(active.view(-1, *([1] * (new.ndim - 1))), new, old)


def _raise_if_failed(
    failed: Tensor, rows: Tensor | None = None, overflowed: Tensor | None = None, dtype: torch.dtype | None = None
) -> None:
    """One host sync on the happy path; ``overflowed`` (B,) flags a non-finite E-step."""
    if not bool((failed if overflowed is None else failed | overflowed).any()):
        return

    def problems(mask: Tensor) -> list[int]:
        found = torch.nonzero(mask).flatten()
        return (found if rows is None else rows[found]).tolist()[:10]

    if overflowed is not None and bool(overflowed.any()):
        # Reported first: the overflow is what made the covariances NaN.
        raise ValueError(
            f"Fitting the mixture model failed in the E-step (problems {problems(overflowed)}): the "
            f"log-likelihood is not finite because squared Mahalanobis distances overflowed "
            f"{dtype} (a component with a tiny variance far from other data). Rescale `x`, "
            f"increase `reg_covar`, or fit in float64."
        )
    raise ValueError(
        f"Fitting the mixture model failed because some components have ill-defined "
        f"empirical covariance (problems {problems(failed)}): the covariance is not positive "
        f"definite. Try increasing `reg_covar`, or decreasing `n_components`; in float32, "
        f"clusters thousands of standard deviations apart also cause this: fit in float64."
    )


# ----------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------
_FITTED_BUFFERS = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_cholesky_",
    "lower_bound_",
    "n_iter_",
    "converged_",
)


class GaussianMixture(nn.Module):
    """A Gaussian mixture fitted by EM, with scikit-learn's vocabulary.

    Fitted parameters are buffers, so ``.to(device)``, ``state_dict()`` and
    ``load_state_dict()`` (also into a fresh, unfitted module) work. Fit ``(N, D)`` data
    to get scikit-learn's attribute shapes (``means_`` is ``(K, D)``); fit ``(B, N, D)``
    to solve B independent problems at once (``means_`` is ``(B, K, D)``).

    Args:
        n_components: K.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        tol, reg_covar, max_iter, init_params, weights_init, means_init, precisions_init:
            as in :func:`fit_gaussian_mixture` and scikit-learn.
        random_state: int seed, ``torch.Generator`` (on the fit's device), or a numpy
            ``RandomState``/``Generator`` (a seed is drawn from it, so each fit advances it,
            as in scikit-learn) for the initialisation.
        device, dtype: where and in which precision to fit; default: the data's (float32
            loses precision for clusters hundreds of standard deviations apart; see the
            module docstring). float16/bfloat16 data (or ``dtype``) are fitted in float32,
            and the fitted buffers are float32. ``fit`` replaces the buffers, so casting
            the module before it (``.double()``) does not choose the precision: pass
            ``dtype`` (or float64 data); casting a fitted module casts its buffers, as usual.
        process_group: fit across the ranks of this ``torch.distributed`` group, each passing
            its own shard to ``fit`` (see :func:`fit_gaussian_mixture`); every rank ends with
            the same parameters.
        distributed: with no ``process_group``, fit across the default (world) group.
        compile: the E-step as one compiled loop (see :func:`fit_gaussian_mixture`).

    ``fit`` also takes a chunked source (a list of chunks, a ``DataLoader``, a zero-argument
    callable returning an iterator; chunks ``(N_i, D)`` or ``(x, sample_weight)`` pairs) and
    streams it once per EM iteration, equal to the in-memory fit (see
    :func:`fit_gaussian_mixture`).

    scikit-learn's ``n_init`` (best of several initialisations) is not offered: fit a batch
    ``(B, N, D)`` of copies with different ``means_init`` and keep the best ``lower_bound_``.

    Agreement with scikit-learn. Given ``weights_init``, ``means_init`` and
    ``precisions_init``, a float64 fit equals scikit-learn's to ~1e-14 (parameters,
    ``lower_bound_``, ``lower_bounds_``, ``n_iter_``). Whatever is not given comes from
    ``init_params``, computed as scikit-learn computes it but from torch's random draws, which
    cannot reproduce numpy's: so is every result that depends on them. How much that is,
    scikit-learn shows itself: with ``means_init`` alone (the missing weights and covariances
    come from a k-means partition whose cluster numbering is random, see
    :func:`fit_gaussian_mixture`), its own fits of three 3-D blobs differ between
    ``random_state`` values by up to 1e-4 in the means and by 2 in ``n_iter_`` at
    ``tol=1e-6`` (up to 4e-3 in the means at the default ``tol``); where
    torchgmm's k-means numbers the clusters as a scikit-learn run's does, the fits agree to
    ~1e-14. Known differences in the inits: ``"kmeans"`` leaves an empty cluster's centre
    where it was (scikit-learn moves it to a far sample; only with duplicate points or
    unlucky seeds); after ``"k-means++"`` and ``"random_from_data"`` the starting weights
    are 1/K, where scikit-learn leaves 1/N (unnormalised: its first ``lower_bounds_`` entry
    is log(N/K) lower, so it cannot stop after the second iteration; the M-step normalises).

    Fitted attributes (scikit-learn's names; the B dim only for a batched fit):
    ``weights_`` (B, K), ``means_`` (B, K, D), ``covariances_``, ``precisions_cholesky_``
    and ``precisions_`` (shapes in the module docstring), ``lower_bound_`` (B,),
    ``lower_bounds_`` (the bound after each iteration: ``(n_iter_,)``, or ``(B, T)``
    NaN-padded after each problem stopped), ``n_iter_`` and ``converged_`` (B,), and
    ``n_features_in_`` (D, an int).

    Shape:
        - x: ``(N, D)`` or ``(B, N, D)``; sample_weight ``(N,)`` or ``(B, N)``.
        - forward / predict_proba: ``(N, K)`` or ``(B, N, K)``.
        - predict: ``(N,)`` or ``(B, N)`` int64.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 6])
        >>> gm = GaussianMixture(2, random_state=0).fit(x)
        >>> gm.means_.shape, bool(gm.converged_)
        (torch.Size([2, 2]), True)
        >>> gm.predict(torch.tensor([[0.0, 0.0], [6.0, 6.0]])).unique().numel()
        2
    """

    weights_: Tensor  #: (K,) or (B, K)
    means_: Tensor  #: (K, D) or (B, K, D)
    covariances_: Tensor  #: see the module docstring (B dim only for batched fits)
    precisions_cholesky_: Tensor  #: same shape as covariances_
    lower_bound_: Tensor  #: () or (B,)
    n_iter_: Tensor  #: () or (B,) int64
    converged_: Tensor  #: () or (B,) bool
    lower_bounds_: Tensor  #: (n_iter_,) or (B, max n_iter_), NaN after a problem stopped

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: CovarianceType = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        init_params: InitMethod = "kmeans",
        weights_init: Tensor | None = None,
        means_init: Tensor | None = None,
        precisions_init: Tensor | None = None,
        random_state: int | torch.Generator | np.random.RandomState | np.random.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any = None,
        distributed: bool = False,
        compile: bool = False,  # noqa: A002 - the flag's natural name, as torch.compile
    ) -> None:
        super().__init__()
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.fit_device = device
        self.fit_dtype = dtype
        self.process_group = process_group
        self.distributed = distributed
        self.compile = compile
        for name in _FITTED_BUFFERS:
            self.register_buffer(name, torch.empty(0))
        # The lower bound after every EM iteration of the last fit: a record of that run, not
        # needed to predict or to resume, so it stays out of state_dict (checkpoints written
        # before it existed load unchanged) and load_state_dict empties it.
        self.register_buffer("lower_bounds_", torch.empty(0), persistent=False)

    # -- fitting ---------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator | None:
        state = self.random_state
        if isinstance(state, torch.Generator) or state is None:
            check_generators(state, 1, device, name="random_state")
            return state
        if isinstance(state, numbers.Integral) and not isinstance(state, bool):
            seed = int(state)
        elif hasattr(state, "randint") and hasattr(state, "get_state"):  # numpy RandomState
            # scikit-learn's check_random_state uses the RandomState's own stream; a seed
            # drawn from it does the same here: reproducible from the RandomState's seed,
            # and each fit advances it, as each scikit-learn fit does.
            seed = int(state.randint(0, 2**31 - 1))
        elif hasattr(state, "integers") and hasattr(state, "bit_generator"):  # numpy Generator
            seed = int(state.integers(0, 2**63 - 1))
        else:
            raise TypeError(
                f"`random_state` must be None, an int seed, a torch.Generator or a numpy "
                f"RandomState/Generator, got {type(state).__name__}."
            )
        if seed < 0:
            raise ValueError(f"`random_state` must be a non-negative seed, got {seed}.")
        return torch.Generator(device=device).manual_seed(seed)

    def _prepare(self, x: Tensor) -> Tensor:
        check_tensor(x, "x")
        device = self.fit_device if self.fit_device is not None else x.device
        if self.fit_dtype is None:
            # fit_gaussian_mixture picks the precision from x's dtype (half -> float32).
            return x.to(device=device)
        self._check_fit_dtype()
        return x.to(device=device, dtype=self.fit_dtype)

    def _check_fit_dtype(self) -> None:
        if self.fit_dtype is not None and self.fit_dtype not in FIT_DTYPES + _HALF_DTYPES:
            raise TypeError(f"`dtype` must be one of {FIT_DTYPES} (or half precision), got {self.fit_dtype}.")

    def _process_group(self) -> Any:
        if self.process_group is not None or not self.distributed:
            return self.process_group
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "`distributed=True` fits across the default process group, but torch.distributed "
                "is not initialised: call torch.distributed.init_process_group (or start with torchrun)."
            )
        return dist.group.WORLD

    def fit(self, x: Tensor | Chunks, sample_weight: Tensor | None = None) -> GaussianMixture:
        """Estimate the parameters by EM; returns ``self``.

        ``x`` is a tensor or a chunked source (see the class docstring); with a process
        group, this rank's shard. Warns :class:`ConvergenceWarning` when a problem did not
        converge.
        """
        group = self._process_group()
        options = dict(
            covariance_type=self.covariance_type,
            tol=self.tol,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            init_params=self.init_params,
            weights_init=self.weights_init,
            means_init=self.means_init,
            precisions_init=self.precisions_init,
        )
        if group is None and (isinstance(x, Tensor) or not is_chunked_source(x)):
            options["compile"] = self.compile
            x = self._prepare(x)
            fit = fit_gaussian_mixture(
                x, self.n_components, sample_weight=sample_weight, generator=self._generator(x.device), **options
            )
            unbatch = x.ndim == 2
        else:
            from torchgmm.mixture_chunked import (
                fit_chunked,  # chunks and processes: their own module
            )

            self._check_fit_dtype()
            check_positive_int(self.n_components, "n_components")
            check_positive_int(self.max_iter, "max_iter", minimum=0)
            check_choice(self.covariance_type, "covariance_type", COVARIANCE_TYPES)
            check_choice(self.init_params, "init_params", INIT_METHODS)
            em = _EMOptions(
                self.n_components,
                self.covariance_type,
                check_real(self.tol, "tol", minimum=0),
                check_real(self.reg_covar, "reg_covar", minimum=0),
                self.max_iter,
                self.init_params,
                4,
                bool(self.compile),
            )
            device = self._chunk_device(x)
            fit, batched = fit_chunked(
                x,
                em,
                sample_weight=sample_weight,
                weights_init=self.weights_init,
                means_init=self.means_init,
                precisions_init=self.precisions_init,
                generator=self._generator(device),
                device=device,
                dtype=self.fit_dtype,
                process_group=group,
            )
            unbatch = not batched
        for name, value in zip(_FITTED_BUFFERS, fit):
            setattr(self, name, value[0] if unbatch else value)
        self.lower_bounds_ = fit.lower_bounds[0] if unbatch else fit.lower_bounds
        # max_iter=0 asks for the initial parameters: not a failure to converge (scikit-learn)
        if self.max_iter > 0 and not bool(fit.converged.all()):
            warnings.warn(
                f"EM did not converge in {self.max_iter} iterations for "
                f"{int((~fit.converged).sum())} of {len(fit.converged)} problem(s); try a larger "
                f"`max_iter`, a larger `tol`, or another `init_params`.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _chunk_device(self, x: Any) -> torch.device:
        """The device a chunked (or distributed) fit runs on: ``device``, else the data's
        (a tensor shard's; for chunks, the first chunk's, read once more)."""
        if self.fit_device is not None:
            return torch.device(self.fit_device)
        if isinstance(x, Tensor):
            return x.device
        for item in x() if callable(x) else x:
            first = item if isinstance(item, Tensor) else item[0] if isinstance(item, (tuple, list)) else None
            return first.device if isinstance(first, Tensor) else torch.device("cpu")
        return torch.device("cpu")

    def fit_predict(self, x: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """Fit, then label ``x``; ``(N,)`` or ``(B, N)`` int64."""
        return self.fit(x, sample_weight).predict(x)

    # -- inference -------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.means_.numel() > 0

    @property
    def precisions_(self) -> Tensor:
        """Precision matrices (inverse covariances), scikit-learn's ``precisions_``.

        Computed from the stored Cholesky factors as scikit-learn does, ``P = L L'`` for
        ``full`` ``(K, D, D)`` and ``tied`` ``(D, D)``, ``L^2`` for ``diag`` ``(K, D)`` and
        ``spherical`` ``(K,)``; a leading B for a batched fit; empty before ``fit``. Derived,
        not stored, so it always agrees with the buffers (also after ``load_state_dict``).

        Example:
            >>> gm = GaussianMixture(1, covariance_type="diag").fit(torch.tensor([[0.0], [2.0]]))
            >>> gm.precisions_  # 1 / (variance 1 + reg_covar 1e-6)
            tensor([[1.0000]])
        """
        if not self.is_fitted:
            return self.precisions_cholesky_
        return _precision_matrices(self.precisions_cholesky_, self.covariance_type)

    @property
    def n_features_in_(self) -> int:
        """D, the number of features seen by ``fit`` (scikit-learn's ``n_features_in_``).

        Like scikit-learn's, it does not exist before ``fit``: ``hasattr`` is false.
        """
        if not self.is_fitted:
            raise AttributeError("n_features_in_")  # nn.Module.__getattr__ words the error
        return int(self.means_.shape[-1])

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        """Batched (x, weights, means, precisions_cholesky) and whether to unbatch results."""
        if not self.is_fitted:
            raise RuntimeError("This GaussianMixture is not fitted yet; call `fit` first.")
        check_tensor(x, "x")
        check_ndim(x, "x", (2, 3), "(B, N, D) or (N, D)")
        _fit_dtype(x)  # refuses complex x, which .to() below would silently make real
        unbatch = x.ndim == 2
        batched_params = self.means_.ndim == 3
        x = x.to(device=self.means_.device, dtype=self.means_.dtype)
        if unbatch:
            x = x.unsqueeze(0)
        weights, means, prec = self.weights_, self.means_, self.precisions_cholesky_
        if not batched_params:
            weights, means, prec = weights[None], means[None], prec[None]
        if x.shape[-1] != means.shape[-1]:
            raise ShapeError(f"`x` has D={x.shape[-1]} features; the model was fitted with D={means.shape[-1]}.")
        if x.shape[0] != means.shape[0] and means.shape[0] != 1:
            raise ShapeError(f"`x` has B={x.shape[0]} problems; the model was fitted with B={means.shape[0]}.")
        return (
            x,
            weights.expand(x.shape[0], -1),
            means.expand(x.shape[0], -1, -1),
            prec.expand(x.shape[0], *prec.shape[1:]),
            unbatch,
        )

    def _log_resp(self, x: Tensor) -> tuple[Tensor, Tensor, bool]:
        x, weights, means, prec, unbatch = self._params(x)
        log_resp, log_likelihood = estimate_log_resp(x, weights, means, prec, self.covariance_type)
        # One check of the output replaces the check of the input (same one host sync): NaN
        # or inf in x makes its log-likelihood non-finite, and so does a squared Mahalanobis
        # distance that overflows (|x| ~ 1e19 in float32 under unit variance), which used to
        # come back as silent NaN (inf - inf in the expansion, or -inf - -inf in log_resp).
        if not bool(torch.isfinite(log_likelihood).all()):
            self._raise_non_finite(x, log_likelihood)
        return log_resp, log_likelihood, unbatch

    def _raise_non_finite(self, x: Tensor, log_likelihood: Tensor) -> None:
        check_finite(x, "x", "prediction")
        for name in _FITTED_BUFFERS[:4]:
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"The model's `{name}` holds NaN or inf (loaded from a bad state?).")
        n_bad = int((~torch.isfinite(log_likelihood)).sum())
        raise ValueError(
            f"The log-likelihood of {n_bad} sample(s) of `x` overflowed {log_likelihood.dtype}: "
            f"they are so far from every component that the squared Mahalanobis distance "
            f"exceeds {torch.finfo(log_likelihood.dtype).max:.3g}. Convert the model and `x` to "
            f"float64 (`model.to(torch.float64)`) or rescale the data."
        )

    def predict_proba(self, x: Tensor) -> Tensor:
        """Posterior probability of each component, ``(N, K)`` or ``(B, N, K)``."""
        log_resp, _, unbatch = self._log_resp(x)
        resp = log_resp.exp()
        return resp[0] if unbatch else resp

    def forward(self, x: Tensor) -> Tensor:
        """Responsibilities (see :meth:`predict_proba`), so the model drops into a pipeline."""
        return self.predict_proba(x)

    def predict(self, x: Tensor) -> Tensor:
        """Most probable component per sample, ``(N,)`` or ``(B, N)`` int64."""
        log_resp, _, unbatch = self._log_resp(x)
        labels = log_resp.argmax(-1)
        return labels[0] if unbatch else labels

    def score_samples(self, x: Tensor) -> Tensor:
        """Log-likelihood of each sample, ``(N,)`` or ``(B, N)``."""
        _, log_likelihood, unbatch = self._log_resp(x)
        return log_likelihood[0] if unbatch else log_likelihood

    def _total_log_likelihood(self, x: Tensor, sample_weight: Tensor | None) -> tuple[Tensor, Tensor, bool]:
        """(Weighted) sum of the log-likelihoods and the sample size, both ``(B,)``.

        The sample size is the total weight: weight c on a row counts as c rows, as in the
        fit (its ``lower_bound_`` is the weighted mean log-likelihood), so every criterion
        below equals scikit-learn's on the rows repeated by integer weights.
        """
        _, log_likelihood, unbatch = self._log_resp(x)
        # (B, N, 1) stands for x: the weights are checked against its (B, N).
        sample_weight = _batched_weight(sample_weight, log_likelihood.unsqueeze(-1))
        if sample_weight is None:
            n = log_likelihood.new_full(log_likelihood.shape[:1], log_likelihood.shape[1])
            return log_likelihood.sum(-1), n, unbatch
        return (log_likelihood * sample_weight).sum(-1), sample_weight.sum(-1), unbatch

    def score(self, x: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """Mean log-likelihood, weighted by ``sample_weight`` if given.

        Args:
            x: ``(N, D)`` or ``(B, N, D)``.
            sample_weight: ``(N,)`` or ``(B, N)`` non-negative weights; weight c equals
                repeating the row c times: ``sum_n w_n log p(x_n) / sum_n w_n``.

        Returns:
            A 0-d tensor, or ``(B,)`` for batched input, in the model's dtype.

        Example:
            >>> gm = GaussianMixture(1).fit(torch.tensor([[0.0], [2.0]]))  # N(1, 1)
            >>> x, w = torch.tensor([[1.0], [2.0]]), torch.tensor([3.0, 1.0])
            >>> gm.score(x, w), gm.score(torch.tensor([[1.0], [1.0], [1.0], [2.0]]))
            (tensor(-1.0439), tensor(-1.0439))
        """
        total, n, unbatch = self._total_log_likelihood(x, sample_weight)
        mean = total / n
        return mean[0] if unbatch else mean

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.means_.shape[-1]
        covariance = {
            "full": k * d * (d + 1) // 2,
            "diag": k * d,
            "tied": d * (d + 1) // 2,
            "spherical": k,
        }[self.covariance_type]
        return covariance + k * d + k - 1

    def bic(self, x: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """Bayesian information criterion on ``x`` (lower is better).

        ``-2 log L + p log n`` with ``log L = sum_n w_n log p(x_n)`` and the sample size
        ``n = sum_n w_n`` (the number of rows without weights), so a histogram's counts give
        the BIC of the pixels. Shapes as in :meth:`score`.

        Example:
            >>> gm = GaussianMixture(1).fit(torch.tensor([[0.0], [2.0]]))  # p = 2 parameters
            >>> x, w = torch.tensor([[1.0], [2.0]]), torch.tensor([3.0, 1.0])
            >>> gm.bic(x, w), gm.bic(torch.tensor([[1.0], [1.0], [1.0], [2.0]]))
            (tensor(11.1241), tensor(11.1241))
        """
        total, n, unbatch = self._total_log_likelihood(x, sample_weight)
        bic = -2 * total + self._n_parameters() * n.log()
        return bic[0] if unbatch else bic

    def aic(self, x: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        """Akaike information criterion on ``x`` (lower is better): ``-2 log L + 2 p``,
        with ``log L`` weighted as in :meth:`bic`. Shapes as in :meth:`score`."""
        total, _, unbatch = self._total_log_likelihood(x, sample_weight)
        aic = -2 * total + 2 * self._n_parameters()
        return aic[0] if unbatch else aic

    def sample(self, n_samples: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw samples from the fitted mixture.

        Returns:
            ``(x, labels)``: ``(n_samples, D)`` and ``(n_samples,)`` (with a leading B for a
            batched model), samples grouped by component as in scikit-learn.
        """
        check_positive_int(n_samples, "n_samples")
        if not self.is_fitted:
            raise RuntimeError("This GaussianMixture is not fitted yet; call `fit` first.")
        unbatch = self.means_.ndim == 2
        weights = self.weights_[None] if unbatch else self.weights_
        means = self.means_[None] if unbatch else self.means_
        cov = self.covariances_[None] if unbatch else self.covariances_
        b, k, d = means.shape
        labels = torch.multinomial(weights, n_samples, replacement=True, generator=generator).sort(-1).values
        noise = torch.randn(b, n_samples, d, generator=generator, device=means.device, dtype=means.dtype)
        centre = means.gather(1, labels.unsqueeze(-1).expand(b, n_samples, d))
        if self.covariance_type in ("full", "tied"):
            chol = torch.linalg.cholesky(cov)
            if self.covariance_type == "full":
                chol = chol.gather(1, labels[..., None, None].expand(b, n_samples, d, d))
            else:
                chol = chol.unsqueeze(1)
            offset = (chol @ noise.unsqueeze(-1)).squeeze(-1)
        else:
            std = cov.sqrt()
            if self.covariance_type == "spherical":
                std = std.unsqueeze(-1).expand(b, k, d)
            offset = noise * std.gather(1, labels.unsqueeze(-1).expand(b, n_samples, d))
        samples = centre + offset
        return (samples[0], labels[0]) if unbatch else (samples, labels)

    # -- state -----------------------------------------------------------------------------
    def _state_mismatch(self, state_dict, prefix: str) -> str | None:
        """Why a fitted state cannot be this module's (n_components, covariance_type), or None.

        The buffers take the incoming shapes (below), so nn.Module's own size check never
        fires: without this, a K=2 state loaded into GaussianMixture(3) predicted with K=2,
        and a covariance-type mismatch failed only at predict, inside ``expand``.
        """
        means = state_dict.get(prefix + "means_")
        if means is None or means.numel() == 0:
            return None  # an unfitted state; a missing key is reported by nn.Module
        if means.ndim not in (2, 3):
            return (
                f"size mismatch for {prefix}means_: copying a param with shape {tuple(means.shape)} "
                f"from checkpoint, expected (K, D) or (B, K, D)."
            )
        lead, (k, d) = tuple(means.shape[:-2]), tuple(means.shape[-2:])
        if k != self.n_components:
            return (
                f"size mismatch for {prefix}means_: copying a param with shape {tuple(means.shape)} "
                f"from checkpoint, which has n_components={k}; this GaussianMixture has "
                f"n_components={self.n_components}. Construct it with n_components={k}."
            )

        def covariance_shape(covariance_type: str) -> tuple[int, ...]:
            return _covariance_shape(covariance_type, *(lead or (1,)), k, d)[1 - len(lead) :]

        expected = {
            "weights_": lead + (k,),
            "covariances_": covariance_shape(self.covariance_type),
            "precisions_cholesky_": covariance_shape(self.covariance_type),
            "lower_bound_": lead,
            "n_iter_": lead,
            "converged_": lead,
        }
        for name, shape in expected.items():
            value = state_dict.get(prefix + name)
            if value is None or tuple(value.shape) == shape:
                continue
            hint = ""
            if name in ("covariances_", "precisions_cholesky_"):
                fits = [c for c in COVARIANCE_TYPES if covariance_shape(c) == tuple(value.shape)]
                if fits:
                    hint = f" The checkpoint's shape fits covariance_type={fits[0]!r}."
            return (
                f"size mismatch for {prefix}{name}: copying a param with shape {tuple(value.shape)} "
                f"from checkpoint, expected {shape} for covariance_type={self.covariance_type!r}, "
                f"n_components={k}, D={d}.{hint}"
            )
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # noqa: E501
        mismatch = self._state_mismatch(state_dict, prefix)
        if mismatch is not None:
            # load_state_dict raises RuntimeError with it (strict or not); this module is
            # left as it was.
            error_msgs.append(mismatch)
            return
        self._buffers["lower_bounds_"] = self.lower_bounds_.new_empty(0)  # not this state's run
        # Fitted buffers are shaped by the data: give each the incoming shape first so a
        # fresh (unfitted) module can load a fitted state.
        for name in _FITTED_BUFFERS:
            key = prefix + name
            if key in state_dict:
                incoming = state_dict[key]
                device = self._buffers[name].device
                self._buffers[name] = torch.empty_like(incoming, device=device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, covariance_type={self.covariance_type!r}"
