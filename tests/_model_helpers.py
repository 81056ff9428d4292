"""Model-test helpers shared by ``test_models.py``, ``test_model_parts.py`` and
``test_model_split.py`` (plain functions, no pytest magic): seeded models and random device
inputs with given real lengths, padding tools."""

from __future__ import annotations

import torch
from torch import nn

from shoal.client.models import INPUT_NAMES, Reranker, build_model
from shoal.config import ModelConfig, SimConfig
from shoal.datasets.schema import Schema
from shoal.datasets.simulator import sim_schema
from shoal.registry import MODELS

ALL_MODELS = MODELS.names()
SIM_SCHEMA = sim_schema(SimConfig())
N_ITEMS = 60  # catalog of the random batches


def _model(name: str, schema: Schema = SIM_SCHEMA, n_items: int = N_ITEMS, **kw) -> Reranker:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **kw), schema, n_items).eval()


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def _acts(vocab: tuple[int, ...], shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    cols = [torch.randint(1, int(v), shape, generator=g) for v in vocab]
    return torch.stack(cols, dim=-1)  # (B, T, A + 1), ids >= 1


def random_inputs(
    schema: Schema,
    emb_dim: int,
    k_len: list[int],
    ie_len: list[int],
    ipv_len: list[int],
    seed: int = 0,
    K: int | None = None,
    m: int | None = None,
    n: int | None = None,
) -> list[torch.Tensor]:
    """Device inputs (``INPUT_NAMES`` order) with the given real lengths; padding is zero."""
    g = torch.Generator().manual_seed(seed)
    B = len(k_len)
    K, m, n = K or max(k_len), m or max(ie_len) or 1, n or max(ipv_len) or 1
    S = len(schema.score_names)
    cm, iem, ipm = _mask(k_len, K), _mask(ie_len, m), _mask(ipv_len, n)
    out = [
        torch.randn(B, K, emb_dim, generator=g) * cm[..., None],
        torch.randn(B, K, S, generator=g) * cm[..., None],
        cm,
        torch.randn(B, m, emb_dim, generator=g) * iem[..., None],
        _acts(schema.ie_action_vocab, (B, m), g) * iem[..., None],
        iem,
        torch.randn(B, n, emb_dim, generator=g) * ipm[..., None],
        _acts(schema.ipv_action_vocab, (B, n), g) * ipm[..., None],
        ipm,
    ]
    assert len(out) == len(INPUT_NAMES)
    return out


def scramble_padding(x: list[torch.Tensor], schema: Schema, seed: int) -> list[torch.Tensor]:
    """Random content (valid ids) in every padded slot; real slots untouched."""
    g = torch.Generator().manual_seed(seed)
    out = list(x)
    groups = (
        (0, 1, 2, None),
        (3, 4, 5, schema.ie_action_vocab),
        (6, 7, 8, schema.ipv_action_vocab),
    )
    for a, b, mi, vocab in groups:
        pad = ~x[mi]
        out[a] = torch.where(pad[..., None], 5 * torch.randn(x[a].shape, generator=g), x[a])
        if vocab is None:  # scores
            rnd = 5 * torch.randn(x[b].shape, generator=g)
        else:
            rnd = torch.stack(
                [torch.randint(0, int(v), x[b].shape[:2], generator=g) for v in vocab], -1
            )
        out[b] = torch.where(pad[..., None], rnd, x[b])
    return out


def pad_inputs(x: list[torch.Tensor], dk: int, dm: int, dn: int) -> list[torch.Tensor]:
    """Append ``dk`` candidate, ``dm`` IE and ``dn`` IPV padded slots (zeros, masks False)."""
    out = []
    for i, t in enumerate(x):
        extra = (dk, dk, dk, dm, dm, dm, dn, dn, dn)[i]
        shape = (t.shape[0], extra, *t.shape[2:])
        out.append(torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=1))
    return out


def _default_inputs(model: Reranker, schema: Schema = SIM_SCHEMA, seed: int = 0):
    # rows: full, short list, empty IE, empty IPV, both empty, single candidate
    return random_inputs(
        schema,
        model.cloud.out_dim,
        k_len=[7, 3, 5, 6, 4, 1],
        ie_len=[9, 4, 0, 2, 0, 9],
        ipv_len=[5, 1, 3, 0, 0, 5],
        seed=seed,
    )


def _modules(net: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, cls)]
