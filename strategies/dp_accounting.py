"""Privacy accounting over rounds for the Poisson-subsampled Gaussian mechanism.

A thin wrapper around Opacus' accountants (``rdp``: Rényi DP, Mironov et al.; ``prv``:
privacy random variables, Gopi et al.). One *step* per released aggregate with sampling rate
q = (expected sampled devices) / (devices) and noise multiplier z (the combined multiplier of
all releases that round; see :mod:`shoal.strategies.dp_math`).
"""

from __future__ import annotations

import copy

from opacus.accountants import PRVAccountant, RDPAccountant


def _make(kind: str):
    if kind == "rdp":
        return RDPAccountant()
    if kind == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown accountant {kind!r}; use rdp or prv")


class Accountant:
    """Cumulative (ε, δ) of a run.

    Parameters
    ----------
    kind : str
        ``rdp`` or ``prv``.
    delta : float
        δ at which ε is reported.
    """

    def __init__(self, kind: str, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.kind = kind
        self.delta = delta
        self._acc = _make(kind)

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self._acc.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Record one release."""
        if noise_multiplier <= 0:
            raise ValueError("accounting needs a positive noise multiplier")
        self._acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """ε spent so far at ``delta`` (0 before any release)."""
        if not self._acc.history:
            return 0.0
        return float(self._acc.get_epsilon(delta=self.delta))

    def epsilon_after(self, noise_multiplier: float, sample_rate: float) -> float:
        """ε if one more release with these parameters happened (nothing is recorded)."""
        probe = copy.deepcopy(self)
        probe.step(noise_multiplier, sample_rate)
        return probe.epsilon()

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "delta": self.delta,
            "history": [list(h) for h in self._acc.history],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"accountant state is {state['kind']!r}, not {self.kind!r}")
        self.delta = float(state["delta"])
        self._acc = _make(self.kind)
        self._acc.history = [(float(z), float(q), int(s)) for z, q, s in state["history"]]
