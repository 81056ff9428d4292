"""A GRU whose per-sample gradients Opacus computes in one batched pass (on-device DP-SGD).

``nn.GRU`` runs a fused kernel that Opacus cannot look into (no grad sampler, no vmap rule);
Opacus' own replacement, ``DPGRU``, unrolls the recurrence into one module call per time step
and layer and gathers per-sample gradients with hooks at every call, which is slow on long
sequences (50 behaviour slots, 100 candidates) and renames the parameters. :class:`SampleGRU`
is ``nn.GRU`` itself (same kernel, same parameters and names, so the weights a device sends
keep ``nn.GRU``'s keys): only its type differs, and Opacus' hook mode calls
:func:`gru_grad_sample` for it, which recomputes the gates and back-propagates through time
once for the whole batch, keeping every request's gradient apart (``einsum`` over time).

Restrictions (checked): batch-first, unidirectional, no projection, no dropout between layers,
no initial state. The loss must depend on the output sequence only, not on the final state
``h_n`` (Opacus hands a grad sampler the gradient of the first output); the rerankers read the
output sequence. ``tests/test_local_dp.py`` checks per-sample gradients against a loop over
single-request losses.

The attention's :class:`~shoal.client.models.parts.FieldScale` (field-match weights) gets its
exact per-sample gradient here too (:func:`field_scale_grad_sample`).
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from shoal.client.models.parts import FieldScale


class SampleGRU(nn.GRU):
    """``nn.GRU`` with batched per-sample gradients under Opacus (see the module docstring)."""

    @classmethod
    def of(cls, gru: nn.GRU) -> SampleGRU:
        """A copy of ``gru`` as a SampleGRU (same weights and parameter names)."""
        if not gru.batch_first or gru.bidirectional or gru.proj_size or gru.dropout:
            raise ValueError(f"on-device DP-SGD supports batch-first plain GRUs only: {gru}")
        out = cls(gru.input_size, gru.hidden_size, gru.num_layers, bias=gru.bias, batch_first=True)
        out.load_state_dict(gru.state_dict())
        return out


def _run_layer(x, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """Output sequence (B, T, H) of one GRU layer from a zero state (the fused kernel)."""
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    h0 = x.new_zeros(1, x.shape[0], w_hh.shape[1])
    return torch.gru(x, h0, params, b_ih is not None, 1, 0.0, False, False, True)[0]


def _layer_grads(x, dy, w_ih, w_hh, b_ih, b_hh):
    """Per-sample gradients of one layer and the gradient of its input.

    x (B, T, D) input, dy (B, T, H) dL/d output → (dW_ih, dW_hh, db_ih, db_hh, dx); the output
    sequence comes from the fused kernel, the gates are recomputed for all steps at once, and
    only the recurrence dh_t = dy_t + ∂h_{t+1}/∂h_t · dh_{t+1} runs step by step.
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    out = _run_layer(x, w_ih, w_hh, b_ih, b_hh)
    h_prev = torch.cat([out.new_zeros(B, 1, H), out[:, :-1]], dim=1)  # (B, T, H)
    gi = x @ w_ih.T + (b_ih if b_ih is not None else 0.0)  # (B, T, 3H)
    gh = h_prev @ w_hh.T + (b_hh if b_hh is not None else 0.0)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    # d pre-activations = dh_t ⊙ these factors (h_t = (1 - z) n + z h_{t-1})
    a_n = (1 - z) * (1 - n * n)  # i_n
    a_z = (h_prev - n) * z * (1 - z)  # i_z, h_z
    a_r = a_n * h_n * r * (1 - r)  # i_r, h_r
    f_gh = torch.cat([a_r, a_z, a_n * r], dim=-1)  # (B, T, 3H): d gh = dh_t ⊙ f_gh
    dh = torch.empty_like(dy)
    nxt = dy.new_zeros(B, H)
    for t in range(T - 1, -1, -1):
        d = dy[:, t] + nxt
        dh[:, t] = d
        nxt = d * z[:, t] + (d.repeat(1, 3) * f_gh[:, t]) @ w_hh
    d3 = dh.repeat(1, 1, 3)
    dgh = d3 * f_gh
    dgi = d3 * torch.cat([a_r, a_z, a_n], dim=-1)
    dw_ih = torch.einsum("btg,btd->bgd", dgi, x)
    dw_hh = torch.einsum("btg,bth->bgh", dgh, h_prev)
    return dw_ih, dw_hh, dgi.sum(1), dgh.sum(1), dgi @ w_ih


@register_grad_sampler(SampleGRU)
@torch.no_grad()
def gru_grad_sample(
    layer: SampleGRU, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of every GRU parameter, (B, *shape) each.

    activations: the layer's inputs ([x], x (B, T, D)); backprops: dL/d output (B, T, H).
    """
    if len(activations) != 1:
        raise ValueError(
            "SampleGRU computes per-sample gradients only for a GRU called without an initial "
            "hidden state; pass the sequence alone"
        )
    x = activations[0].to(backprops.dtype)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    weights = [
        tuple(getattr(layer, f"{k}_l{i}", None) for k in names) for i in range(layer.num_layers)
    ]
    inputs = [x]
    for w in weights[:-1]:  # inputs of the upper layers
        inputs.append(_run_layer(inputs[-1], *w))
    ret: dict[nn.Parameter, torch.Tensor] = {}
    dy = backprops
    for i in range(layer.num_layers - 1, -1, -1):
        w_ih, w_hh, b_ih, b_hh = weights[i]
        dw_ih, dw_hh, db_ih, db_hh, dy = _layer_grads(inputs[i], dy, w_ih, w_hh, b_ih, b_hh)
        ret[w_ih], ret[w_hh] = dw_ih, dw_hh
        if b_ih is not None:
            ret[b_ih], ret[b_hh] = db_ih, db_hh
    return {p: g for p, g in ret.items() if p.requires_grad}


@register_grad_sampler(FieldScale)
@torch.no_grad()
def field_scale_grad_sample(
    layer: FieldScale, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient of the field weights, (B, F): ``Σ over a field's slice of x · g``.

    activations: [x], x (B, ..., D); backprops: dL/d output, same shape.
    """
    xg = (activations[0] * backprops).reshape(backprops.shape[0], -1, backprops.shape[-1])
    per_dim = xg.sum(1)  # (B, D)
    return {layer.weight: torch.stack([c.sum(-1) for c in per_dim.split(layer.fields, -1)], -1)}
