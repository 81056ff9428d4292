"""``fedavg-dp``: user-level differentially private FedAvg (DP-FedAvg, McMahan et al. 2018).

Each round every device joins independently with probability q = ``fed.fraction`` (Poisson
sampling, what the privacy analysis assumes); each joined device's model delta is clipped to
L2 norm C — by the server (``dp.clipping=server``) or on the device by the ClientApp's
clipping mod (``device``; the server re-checks the bound and drops a reply that breaks it);
the clipped deltas are averaged with **equal weights** over the fixed denominator m = qN and
Gaussian noise of std z_Δ·C/m is added to every trainable parameter (buffers are left alone).
With ``dp.adaptive`` the clipping norm follows the γ-quantile of update norms (Andrew et al.
2019; :mod:`shoal.strategies.dp_math`). An accountant charges one subsampled Gaussian release
per round and reports (ε, δ) in the metrics; with ``dp.target_epsilon`` the run stops before
a round would exceed it.

Why equal weights: the noise is calibrated to one device's largest possible influence on the
average, C/m. Weighting by number of requests lets a heavy device move the average by more
than C/m, so the guarantee would not hold; a weighted configuration is refused.

Why not Flower's ``DifferentialPrivacy*FixedClipping`` wrappers: in flwr 1.41 they divide by
the update norm (an all-zero update raises ZeroDivisionError), draw noise from numpy's global
RNG, average with the wrapped strategy's weights, and account without amplification by
sampling. The release here is the same mechanism with those four points fixed.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from shoal.client.dp_clip import CLIPPING_NORM, UNCLIPPED
from shoal.config import ShoalConfig
from shoal.registry import STRATEGIES
from shoal.strategies import dp_math
from shoal.strategies.aggregate import as_numpy
from shoal.strategies.dp_accounting import Accountant
from shoal.strategies.fedavg import FedAvg
from shoal.strategies.sampling import TRAIN, DeviceDirectory, poisson_devices

logger = logging.getLogger("shoal.strategy")
NORM_SLACK = 1e-5  # float32 rounding of a device-clipped update


@STRATEGIES.register("fedavg-dp")
class FedAvgDP(FedAvg):
    name = "fedavg-dp"

    def __init__(
        self, cfg: ShoalConfig, run_dir: str, directory: DeviceDirectory | None = None
    ) -> None:
        super().__init__(cfg, run_dir, directory)
        if cfg.fed.weighting == "examples":
            raise ValueError(
                "fedavg-dp aggregates with equal weights: weighting by examples would let one "
                "device move the average by more than C/m and void the privacy guarantee; "
                "set fed.weighting=equal (or auto)"
            )
        self.dp = cfg.dp
        self.clip_norm = cfg.dp.clipping_norm
        self.noise = dp_math.NoiseSource([cfg.seed, 41], secure=cfg.dp.secure_rng)
        self.accountant: Accountant | None = None
        self._global: dict[str, np.ndarray] = {}
        self._release: dict[str, float] | None = None

    # --- sampling -----------------------------------------------------------------------

    def sample(self, grid: Grid, rnd: int, purpose: int):
        if purpose != TRAIN:
            return super().sample(grid, rnd, purpose)
        self.n_devices = self._dir(grid).n_devices
        return poisson_devices(self.n_devices, self.fed.fraction, self.seed, rnd)

    @property
    def expected_devices(self) -> float:
        """m = qN, the fixed denominator of the average."""
        return self.fed.fraction * float(self.n_devices or 0)

    def _accountant(self) -> Accountant:
        if self.accountant is None:
            delta = self.dp.delta or 1.0 / max(self.n_devices or 1, 2)
            self.accountant = Accountant(self.dp.accountant, delta)
        return self.accountant

    def count_std(self) -> float:
        """σ_b of the released unclipped count (0 without adaptive clipping)."""
        if not self.dp.adaptive:
            return 0.0
        return self.dp.count_noise or self.expected_devices / 20.0

    def should_stop(self, rnd: int) -> bool:
        """True when the next round would take ε above ``dp.target_epsilon``."""
        if not self.dp.target_epsilon or self.dp.noise_multiplier == 0:
            return False
        after = self._accountant().epsilon_after(self.dp.noise_multiplier, self.fed.fraction)
        if after > self.dp.target_epsilon:
            logger.warning(
                "stopping before round %d: ε would reach %.3f > dp.target_epsilon=%.3f",
                rnd,
                after,
                self.dp.target_epsilon,
            )
            return True
        return False

    # --- hooks ------------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        self._release = None
        self._global = {k: as_numpy(a) for k, a in arrays.items()}
        if self.dp.clipping == "device":
            for m in msgs:  # a fresh ConfigRecord per message (see DeviceStrategy._messages)
                m.content.config_records["config"][CLIPPING_NORM] = float(self.clip_norm)
        return msgs

    def aggregate_train(self, server_round, replies):
        self._release = None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None and self._release is not None:
            metrics = MetricRecord({**dict(metrics), **self._release})
        return arrays, metrics

    def aggregate_arrays(self, server_round: int, valid: list[Message]) -> ArrayRecord | None:
        keys = [k for k, g in self._global.items() if g.dtype.kind == "f"]
        if self.param_keys is not None:
            keys = [k for k in keys if k in self.param_keys]
        sizes = [self._global[k].size for k in keys]
        g = np.concatenate([self._global[k].ravel() for k in keys]).astype(np.float64)
        total, unclipped, used = np.zeros_like(g), 0, 0
        for msg in valid:
            rec = msg.content.array_records["arrays"]
            delta = np.concatenate([as_numpy(rec[k]).ravel() for k in keys]) - g
            clipped, norm, bit = dp_math.clip(delta, self.clip_norm)
            if self.dp.clipping == "device":
                if norm > self.clip_norm * (1 + NORM_SLACK):
                    logger.warning("update norm %.4g > C=%.4g: excluded", norm, self.clip_norm)
                    continue
                bit = bool(msg.content.metric_records["metrics"].get(UNCLIPPED, bit))
            total += clipped
            unclipped += int(bit)
            used += 1
        m = self.expected_devices
        z, sb = self.dp.noise_multiplier, self.count_std()
        z_delta = dp_math.model_noise_multiplier(z, sb)
        std = z_delta * self.clip_norm / m
        new_vec = g + total / m + self.noise.normal(g.size, std)
        release = {
            "clipping_norm": self.clip_norm,
            "noise_std": std,
            "noise_multiplier": z,
            "dp_devices": used,
            "unclipped_fraction": unclipped / max(used, 1),
        }
        if self.dp.adaptive:
            noised = unclipped + float(self.noise.normal(1, sb)[0])
            self.clip_norm = dp_math.adaptive_clip(
                self.clip_norm, noised, m, self.dp.target_quantile, self.dp.clip_lr
            )
        if z > 0:
            acc = self._accountant()
            acc.step(z, self.fed.fraction)
            release.update(epsilon=acc.epsilon(), delta=acc.delta)
        self._release = release
        out = {k: Array(np.array(a)) for k, a in self._global.items()}  # buffers unchanged
        at = 0
        for k, n in zip(keys, sizes):
            ref = self._global[k]
            out[k] = Array(new_vec[at : at + n].reshape(ref.shape).astype(ref.dtype))
            at += n
        return ArrayRecord(out)

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "clip_norm": self.clip_norm,
            "noise": self.noise.state_dict(),
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
            "n_devices": self.n_devices,
        }

    def load_state_dict(self, state: dict) -> None:
        self.clip_norm = float(state["clip_norm"])
        self.noise.load_state_dict(state["noise"])
        self.n_devices = state["n_devices"]
        if state["accountant"] is not None:
            self._accountant().load_state_dict(state["accountant"])
