"""Example inputs for the device graphs: random forward inputs and their rerank conversion.

:func:`random_inputs` builds tracing and test inputs for :func:`shoal.client.export.export_onnx`
(and the benchmarks); :func:`rerank_inputs` turns forward inputs into the inputs of
``rerank.onnx``. Both are re-exported by :mod:`shoal.client.export`.
"""

from __future__ import annotations

import torch

from shoal.client.models.base import INPUT_NAMES, DeviceNetwork
from shoal.client.models.edgerec import EdgeRecNet


def _config(net: DeviceNetwork):
    cfg = getattr(net, "cfg", None)
    needed = ("emb_dim", "n_scores", "ie_action_vocab", "ipv_action_vocab")
    if cfg is None or not all(hasattr(cfg, k) for k in needed):
        raise TypeError(
            f"{type(net).__name__} has no config with {needed}; pass example_inputs explicitly"
        )
    return cfg


def _lengths(batch: int, size: int, g: torch.Generator, low: int) -> torch.Tensor:
    """(B,) lengths in ``[low, size]``: row 0 full, row 1 at ``low`` (padded / empty rows)."""
    length = torch.randint(low, size + 1, (batch,), generator=g)
    length[0] = size
    if batch > 1:
        length[1] = low
    return length


def random_inputs(
    net: DeviceNetwork,
    batch: int = 2,
    K: int = 7,
    m: int = 5,
    n: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random device-network inputs of the right shapes, dtypes and vocabulary ranges.

    Row 0 is full; with ``batch > 1`` row 1 has one candidate and empty IE and IPV sequences;
    the other rows have random lengths. Padded slots are zero, as in a gathered batch.

    Parameters
    ----------
    net : DeviceNetwork
        An :class:`EdgeRecNet` or :class:`KuaishouNet` (read for D, S and the action vocabs).
    batch, K, m, n : int
        Requests, candidates, IE slots, IPV slots.
    generator : torch.Generator, optional
        Source of randomness (default: a generator seeded with 0).

    Returns
    -------
    tuple of torch.Tensor
        The nine inputs in :data:`INPUT_NAMES` order.
    """
    if min(batch, K, m, n) < 1:
        raise ValueError(f"batch, K, m, n must be >= 1, got {(batch, K, m, n)}")
    cfg = _config(net)
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def mask(size: int, low: int) -> torch.Tensor:
        return torch.arange(size)[None, :] < _lengths(batch, size, g, low)[:, None]  # (B, T)

    def actions(size: int, vocab: tuple[int, ...], msk: torch.Tensor) -> torch.Tensor:
        cols = [torch.randint(1, int(v), (batch, size), generator=g) for v in vocab]
        return torch.stack(cols, dim=-1) * msk[..., None]  # (B, T, A + 1)

    cand_mask, ie_mask, ipv_mask = mask(K, 1), mask(m, 0), mask(n, 0)
    D, S = cfg.emb_dim, cfg.n_scores
    return (
        torch.randn(batch, K, D, generator=g) * cand_mask[..., None],
        torch.randn(batch, K, S, generator=g) * cand_mask[..., None],
        cand_mask,
        torch.randn(batch, m, D, generator=g) * ie_mask[..., None],
        actions(m, tuple(cfg.ie_action_vocab), ie_mask),
        ie_mask,
        torch.randn(batch, n, D, generator=g) * ipv_mask[..., None],
        actions(n, tuple(cfg.ipv_action_vocab), ipv_mask),
        ipv_mask,
    )


def rerank_inputs(net: EdgeRecNet, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Convert forward inputs to rerank inputs: encode the sequences, split off time-since.

    Parameters
    ----------
    net : EdgeRecNet
    inputs : tuple of torch.Tensor
        The nine inputs in :data:`INPUT_NAMES` order.

    Returns
    -------
    tuple of torch.Tensor
        The nine inputs in :data:`RERANK_INPUT_NAMES` order. An absent branch's encoding is an
        empty (B, T, 0) tensor (the graph drops that input).
    """
    if not isinstance(net, EdgeRecNet):
        raise TypeError(f"rerank graphs exist for EdgeRecNet only, got {type(net).__name__}")
    if len(inputs) != len(INPUT_NAMES):
        raise ValueError(f"expected {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(inputs)}")
    ce, cs, cm, ie_emb, ie_act, ie_mask, ipv_emb, ipv_act, ipv_mask = inputs
    with torch.no_grad():
        ie_enc, ipv_enc = net.encode(ie_emb, ie_act, ipv_emb, ipv_act)
    if ie_enc is None:
        ie_enc = ie_emb.new_zeros(*ie_emb.shape[:2], 0)  # (B, m, 0)
    if ipv_enc is None:
        ipv_enc = ipv_emb.new_zeros(*ipv_emb.shape[:2], 0)  # (B, n, 0)
    return ce, cs, cm, ie_enc, ie_act[..., -1], ie_mask, ipv_enc, ipv_act[..., -1], ipv_mask
