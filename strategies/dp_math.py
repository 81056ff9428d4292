"""User-level DP-FedAvg arithmetic: clipping, noise, adaptive clipping (plain functions).

Notation (McMahan et al., arXiv 1710.06963; Andrew et al., arXiv 1905.03871): each round
devices are Poisson-sampled with rate q out of N, so m = qN are expected; device i sends a
model delta Δᵢ; the server averages the clipped deltas with equal weights over the fixed
denominator m and adds Gaussian noise:

    Δ̃ = (1/m) Σᵢ Δᵢ · min(1, C/‖Δᵢ‖)  +  N(0, (z_Δ C / m)² I)

Adaptive clipping also releases the noised count of devices whose update was NOT clipped,
b̄ = (Σᵢ bᵢ + N(0, σ_b²)) / m, and moves C geometrically toward the γ-quantile of update
norms: C ← C · exp(−η (b̄ − γ)). Too many unclipped (b̄ > γ) means C is above the quantile,
so it shrinks. Releasing b̄ costs privacy; the model noise is raised to
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the two releases together are one Gaussian mechanism of
noise multiplier z (Andrew et al., Thm. 1), which the accountant then charges.
"""

from __future__ import annotations

import math
import os

import numpy as np

from shoal.client.dp_clip import clip

__all__ = ["NoiseSource", "adaptive_clip", "clip", "model_noise_multiplier", "naive_adaptive_clip"]


def model_noise_multiplier(z: float, count_std: float) -> float:
    """z_Δ for the model when the unclipped count is released with noise std σ_b.

    ``count_std = 0`` (fixed clipping) gives z. Raises ValueError when z ≥ 2σ_b, where the
    count release alone would already cost more than the whole budget.
    """
    if count_std == 0 or z == 0:
        return z
    inv = z**-2 - (2.0 * count_std) ** -2
    if inv <= 0:
        raise ValueError(
            f"dp.noise_multiplier={z} needs count noise std > z/2 = {z / 2:.3g} "
            f"(got {count_std:.3g}); raise dp.count_noise or lower the noise multiplier"
        )
    return inv**-0.5


def adaptive_clip(c: float, unclipped: float, m: float, gamma: float, eta: float) -> float:
    """One geometric update of the clipping norm: C · exp(−η (b̄ − γ)) with b̄ = unclipped/m.

    ``unclipped`` is the (noised) count of devices whose update was not clipped.
    """
    return c * math.exp(-eta * (unclipped / m - gamma))


def naive_adaptive_clip(c: float, clipped: float, m: float, gamma: float, eta: float) -> float:
    """Flower 1.41's rule: the same formula fed the *clipped* fraction (drives C the wrong
    way: too many clipped makes C shrink further). Kept to show the difference in tests."""
    return c * math.exp(-eta * (clipped / m - gamma))


class NoiseSource:
    """Gaussian noise for DP releases, from an injected seeded generator or the OS CSPRNG.

    Parameters
    ----------
    seed : sequence of int
        Seeds ``numpy.random.Generator(PCG64)`` (reproducible runs and tests).
    secure : bool
        Draw from ``os.urandom`` instead (Box–Muller over 53-bit uniforms): not
        reproducible, and not predictable from the run's seed — use it in deployment.
    """

    def __init__(self, seed: list[int], secure: bool = False) -> None:
        self.secure = secure
        self._rng = np.random.default_rng(seed)

    def normal(self, size: int, std: float) -> np.ndarray:
        """(size,) float64 draws from N(0, std²)."""
        if std == 0:
            return np.zeros(size)
        if not self.secure:
            return self._rng.normal(0.0, std, size)
        n = (size + 1) // 2
        raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint64).reshape(2, n)
        u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53  # (0, 1]
        u2 = (raw[1] >> np.uint64(11)).astype(np.float64) / 2.0**53
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        return std * z[:size]

    def state_dict(self) -> dict:
        return {"secure": self.secure, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.secure = bool(state["secure"])
        self._rng.bit_generator.state = state["rng"]
