"""On-device DP-SGD: sample-level differential privacy of local training (``dp.local``).

The privacy unit is one **rerank request** of the device (its candidate list, behaviour
sequences and labels). :func:`private_train` replaces :func:`shoal.client.device.local_train`
when ``dp.local`` is on: Opacus' ``PrivacyEngine`` with Poisson sampling of the device-fresh
requests (sampling rate ``q = 1 / ceil(n / fed.local_batch)``, ``ceil(n / fed.local_batch)``
steps per epoch, ``fed.local_epochs`` epochs), per-request gradient clipping to
``dp.local_max_grad_norm`` and Gaussian noise ``dp.local_noise_multiplier`` × that bound.

* **Device network only.** The cloud part (item embedding tables) is frozen: its lookups are
  computed without gradient and the reply carries it unchanged. Per-request gradients of
  catalog-size tables would be dense (B × vocabulary × dim); they stay in the cloud.
* **Exact per-request gradients.** A private copy of the network swaps every ``nn.GRU`` for
  :class:`~shoal.client.dp_gru.SampleGRU` (the same kernel, parameters and names, with a
  batched grad sampler) and Opacus' hook mode handles the rest; the weights go back under
  ``nn.GRU``'s names. Ghost clipping does not apply (docs/privacy.md). Padding rows of
  the action and time embeddings (``padding_idx``) get neither gradient nor noise, as in
  plain training.
* **Per-request loss.** Each request's loss is the mean over its own labelled candidates
  and tasks, plus ``train.listwise`` × its listwise term (:func:`request_losses`); the batch
  loss is the mean over requests. (Plain local training averages over all labelled candidates
  of a batch, which couples requests and would break per-request sensitivity.)
* **Cumulative ε.** The accountant history lives in the device store (``dp-accountant``), one
  row per private training session ``(round, phase, noise, q, steps)``; a fresh engine
  starts from the stored history, so ε composes over every round the device trained in. A
  repeated session (same round and phase, after a resume) replaces its row instead of adding.
* **δ.** ``dp.delta`` when set, else 1e-5 for every device, so per-device ε are comparable
  (max / median). Devices hold tens of requests; 1e-5 is far below 1 / n.

``fed.local_per_page`` and ``train.grad_clip`` do not apply under DP (every device-fresh
request is a sampling candidate; per-request clipping replaces batch clipping).
"""

from __future__ import annotations

import copy
import functools
import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shoal.client.device import DeviceRun, device_rng
from shoal.client.dp_gru import SampleGRU
from shoal.client.models.base import DeviceNetwork
from shoal.client.models.reranker import Reranker, batch_tensors, labelled_index, task_targets
from shoal.client.store import DeviceStore
from shoal.config_dp import DPConfig
from shoal.datasets.requests import RerankBatch
from shoal.datasets.schema import Schema

ACCOUNTANT = "dp-accountant"
"""Device-store name of the accountant history."""
DEFAULT_DELTA = 1e-5
PHASES = {"fit": 0, "finetune": 1}
"""Private training sessions a device can run in one round (tasks ``fit``/``fit-personal``
and ``evaluate-finetune``); each gets its own history row and random streams."""
_PURPOSE = 3  # device_rng purpose of private training (plain local training uses 1)
_COLUMNS = 5  # history row: round, phase, noise multiplier, sample rate, steps


@dataclass(frozen=True)
class PrivateResult:
    """What a private training session returns."""

    loss: float
    """Request-weighted mean loss of the last epoch (nan when nothing was trained)."""
    requests: int
    """Device-fresh requests of the device (0: nothing was trained)."""
    epsilon: float
    """Cumulative ε of the device after this session, at ``delta``."""
    delta: float
    steps: int
    """Noisy steps taken in this session."""

    def metrics(self) -> dict[str, float]:
        """Reply metrics ``local_epsilon`` and ``local_delta`` (none when nothing trained)."""
        if self.requests == 0:
            return {}
        return {"local_epsilon": self.epsilon, "local_delta": self.delta}


def local_delta(dp: DPConfig) -> float:
    """δ of the reported per-device ε: ``dp.delta`` when set, else 1e-5."""
    return dp.delta if dp.delta > 0 else DEFAULT_DELTA


# --- loss -----------------------------------------------------------------------------------


def request_losses(
    model: Reranker,
    b: RerankBatch,
    schema: Schema,
    listwise: float = 0.0,
    net: nn.Module | None = None,
) -> torch.Tensor:
    """Loss of every request of a batch, (B,); the cloud lookups carry no gradient.

    ``net`` replaces ``model.device`` (the private copy during DP-SGD).

    Request i: mean binary cross-entropy over its labelled candidates and tasks, plus
    ``listwise`` × ``-Σ_j y_j log softmax(z)_j / Σ_j y_j`` over its labelled candidates' click
    logits when it has both clicks and non-clicks (else 0). A request without labels has
    loss 0. No term depends on another request, so the gradient of entry i is request i's own.
    """
    tb = batch_tensors(b)
    with torch.no_grad():
        inputs = model.ship(tb)  # frozen cloud part
    sel, sel_mask = labelled_index(b.label_mask)  # (B, J)
    net = model.device if net is None else net
    logits = net(*inputs, select=torch.from_numpy(sel))  # (B, J, T)
    target, mask = task_targets(b, model.tasks, schema)  # (B, K, T)
    rows = np.arange(sel.shape[0])[:, None]
    y = torch.from_numpy(target[rows, sel])
    m = torch.from_numpy(mask[rows, sel] & sel_mask[..., None])  # (B, J, T)
    mf = m.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = (bce * mf).sum((1, 2)) / mf.sum((1, 2)).clamp(min=1.0)  # (B,)
    if listwise > 0:
        z, yc, mc = logits[..., 0], y[..., 0], m[..., 0]  # (B, J)
        pos = (yc * mc).sum(1)
        ok = (pos > 0) & (pos < mc.sum(1))
        logp = torch.log_softmax(z.masked_fill(~mc, -1e9), dim=1)
        ce = -(yc * mc * logp).sum(1) / pos.clamp(min=1.0)
        loss = loss + listwise * torch.where(ok, ce, torch.zeros_like(ce))
    return loss


# --- the private copy of the network --------------------------------------------------------


def private_network(net: DeviceNetwork) -> nn.Module:
    """A deep copy of ``net`` with every ``nn.GRU`` as a :class:`SampleGRU` (same parameters,
    same names, same kernel; Opacus computes its per-sample gradients in one batched pass)."""
    net = copy.deepcopy(net)
    for name in [name for name, m in net.named_modules() if type(m) is nn.GRU]:
        parent, _, attr = name.rpartition(".")
        setattr(
            net.get_submodule(parent) if parent else net,
            attr,
            SampleGRU.of(net.get_submodule(name)),
        )
    return net


def _padding_rows(net: nn.Module) -> list[tuple[nn.Parameter, int]]:
    return [
        (m.weight, m.padding_idx)
        for m in net.modules()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None and m.weight.requires_grad
    ]


# --- accountant history in the device store -------------------------------------------------


def load_history(store: DeviceStore, device: int, round: int) -> np.ndarray:
    """The device's history rows ``(round, phase, noise, q, steps)`` (newest saved version,
    this round's included), (N, 5) float64."""
    state = store.load(device, ACCOUNTANT, before_round=round + 1)
    if state is None:
        return np.zeros((0, _COLUMNS))
    rows = state["history"].double().numpy()
    if rows.ndim != 2 or rows.shape[1] != _COLUMNS:
        raise ValueError(f"device {device}: bad {ACCOUNTANT} state of shape {rows.shape}")
    return rows


_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(q: float, z: float) -> np.ndarray:
    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=_ORDERS))


class CachedRDPAccountant(RDPAccountant):
    """Opacus' RDP accountant, with the per-step RDP curve of each (q, z) computed once per
    process: the fractional orders take ~0.4 s per curve, and a device's (q, z) is the same
    every round (and shared by devices with the same number of steps per epoch)."""

    def get_privacy_spent(self, *, delta: float, alphas=None) -> tuple[float, float]:
        if not self.history or alphas is not None:
            return super().get_privacy_spent(delta=delta, alphas=alphas)
        rdp = sum(steps * _rdp_per_step(q, z) for z, q, steps in self.history)
        eps, best = rdp_analysis.get_privacy_spent(orders=list(_ORDERS), rdp=rdp, delta=delta)
        return float(eps), float(best)


def make_accountant(kind: str, rows: np.ndarray) -> IAccountant:
    """An Opacus accountant (``rdp``: :class:`CachedRDPAccountant`, or ``prv``) holding the
    history ``rows``."""
    acc = CachedRDPAccountant() if kind == "rdp" else create_accountant(mechanism=kind)
    history = [(float(z), float(q), int(s)) for _, _, z, q, s in rows if s > 0]
    if history:
        acc.load_state_dict({"history": history, "mechanism": acc.mechanism()})
    return acc


def epsilon(kind: str, rows: np.ndarray, delta: float) -> float:
    """ε at ``delta`` of the composed history ``rows`` (0 for an empty history)."""
    if rows.size == 0 or rows[:, 4].sum() == 0:
        return 0.0
    return float(make_accountant(kind, rows).get_epsilon(delta=delta))


# --- private local training -----------------------------------------------------------------


def private_train(
    model: Reranker,
    run: DeviceRun,
    device: int,
    round: int,
    epochs: int,
    store: DeviceStore,
    phase: str = "fit",
) -> PrivateResult:
    """Train ``model.device`` in place with DP-SGD on the device-fresh requests of ``device``.

    The cloud part is left as it is. The session's steps join the device's accountant history
    in ``store``; the returned ε is cumulative over all its sessions. Raises ValueError if the
    loss becomes NaN or infinite.
    """
    dp: DPConfig = run.cfg.dp
    fed = run.cfg.fed
    delta = local_delta(dp)
    idx = run.requests(device, "device")
    rows = load_history(store, device, round)
    ph = PHASES[phase]
    rows = rows[~((rows[:, 0] == round) & (rows[:, 1] == ph))]  # a repeated session replaces
    if idx.size == 0 or epochs == 0:
        return PrivateResult(
            float("nan"), int(idx.size), epsilon(dp.accountant, rows, delta), delta, 0
        )

    rng = device_rng(run.cfg.seed, round, device, _PURPOSE + ph)
    seeds = [secrets.randbits(62) if dp.secure_rng else int(s) for s in rng.integers(2**62, size=3)]
    torch.manual_seed(seeds[0])  # dropout
    sampling, noise = (
        torch.Generator().manual_seed(seeds[1]),
        torch.Generator().manual_seed(seeds[2]),
    )

    net = private_network(model.device)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    if fed.local_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=fed.local_lr)
    else:
        opt = torch.optim.Adam(params, lr=fed.local_lr)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(np.asarray(idx, dtype=np.int64))),
        batch_size=fed.local_batch,
        generator=sampling,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=dp.accountant)
    engine.accountant = make_accountant(dp.accountant, rows)  # cumulative, not per round
    gsm, opt, loader = engine.make_private(
        module=net,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=dp.local_noise_multiplier,
        max_grad_norm=dp.local_max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise,
    )
    q = float(loader.sample_rate)  # 1 / ceil(n / fed.local_batch)
    padding = _padding_rows(net)
    account = opt.step_hook

    def step_hook(o) -> None:  # after clipping and noise, before the update
        for w, i in padding:
            w.grad[i] = 0.0  # the padding row is not trained: no noise there either
        account(o)

    opt.attach_step_hook(step_hook)

    steps, loss = 0, float("nan")
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for (batch_idx,) in loader:
                opt.zero_grad(set_to_none=True)
                if batch_idx.numel() == 0:  # a Poisson draw can be empty: noise-only step
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                else:
                    b = run.log.batch(np.sort(batch_idx.numpy()), run.seq.ie, run.seq.ipv)
                    losses = request_losses(model, b, run.log.schema, run.cfg.train.listwise, gsm)
                    if not bool(torch.isfinite(losses).all()):
                        raise ValueError(
                            "training loss became non-finite (learning rate too high?)"
                        )
                    with warnings.catch_warnings():  # the first layers' inputs need no grad
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        losses.mean().backward()
                    for w, i in padding:
                        w.grad_sample[:, i] = 0.0
                    total += float(losses.detach().sum())
                    count += int(losses.numel())
                opt.step()
                steps += 1
            loss = total / count if count else float("nan")
    finally:
        gsm.remove_hooks()
    model.device.load_state_dict(net.state_dict(), strict=True)

    rows = np.vstack([rows, [[round, ph, dp.local_noise_multiplier, q, steps]]])
    store.save(device, ACCOUNTANT, {"history": torch.from_numpy(rows)}, round=round)
    eps = float(engine.accountant.get_epsilon(delta=delta))  # prior history + this session
    return PrivateResult(loss, int(idx.size), eps, delta, steps)
