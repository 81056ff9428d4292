"""The ``dp:`` section of :class:`shoal.config.ShoalConfig`: differential privacy.

User-level DP-FedAvg (strategy ``fedavg-dp``) uses the ``clipping*``, ``noise_multiplier``,
``adaptive*``, ``delta``, ``target_epsilon`` and ``secure_rng`` keys; on-device DP-SGD
(``dp.local=true``, any strategy that trains on device) uses the ``local_*`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import check

CLIPPING = ("server", "device")
ACCOUNTANTS = ("rdp", "prv")


@dataclass
class DPConfig:
    """Differential privacy settings (see docs/privacy.md)."""

    noise_multiplier: float = 1.0
    """z: the noise on the average of clipped updates has std z·C/m (m expected devices)."""
    clipping_norm: float = 1.0
    """C: L2 bound of each device's model delta (the initial value when adaptive)."""
    clipping: str = "server"
    """Where updates are clipped: ``server`` (by the strategy) or ``device`` (a client mod)."""
    adaptive: bool = False
    """Adapt C to the ``target_quantile`` of update norms (Andrew et al., 2019)."""
    target_quantile: float = 0.5
    """γ: the share of devices whose update should be left unclipped."""
    clip_lr: float = 0.2
    """η in C ← C·exp(−η(b̄ − γ))."""
    count_noise: float = 0.0
    """σ_b, std of the noise on the count of unclipped devices (0 = m/20, the paper's)."""
    delta: float = 0.0
    """δ of the reported (ε, δ); 0 = 1/#devices."""
    target_epsilon: float = 0.0
    """Stop before a round would take ε above this (0 = no budget)."""
    accountant: str = "rdp"
    """Opacus accountant: ``rdp`` or ``prv``."""
    secure_rng: bool = False
    """Draw DP noise from the OS's CSPRNG instead of the seeded generator (deployment)."""
    local: bool = False
    """On-device DP-SGD (Opacus) around local training, for strategies that train on device."""
    local_noise_multiplier: float = 1.0
    local_max_grad_norm: float = 1.0
    """Per-sample gradient clipping bound of DP-SGD."""

    def __post_init__(self) -> None:
        check(self.noise_multiplier >= 0, "dp.noise_multiplier", "must be >= 0")
        check(self.clipping_norm > 0, "dp.clipping_norm", "must be > 0")
        check(self.clipping in CLIPPING, "dp.clipping", f"one of {CLIPPING}, got {self.clipping!r}")
        check(0.0 < self.target_quantile < 1.0, "dp.target_quantile", "must be in (0, 1)")
        check(self.clip_lr > 0, "dp.clip_lr", "must be > 0")
        check(self.count_noise >= 0, "dp.count_noise", "must be >= 0")
        check(0.0 <= self.delta < 1.0, "dp.delta", "must be in [0, 1)")
        check(self.target_epsilon >= 0, "dp.target_epsilon", "must be >= 0")
        check(self.accountant in ACCOUNTANTS, "dp.accountant", f"one of {ACCOUNTANTS}")
        check(self.local_noise_multiplier > 0, "dp.local_noise_multiplier", "must be > 0")
        check(self.local_max_grad_norm > 0, "dp.local_max_grad_norm", "must be > 0")
