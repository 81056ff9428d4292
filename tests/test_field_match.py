"""The attention's field match (``model.field_match``) learns what the paper's attention does
not within a short budget: "the candidate's category was clicked in the last few minutes".

The label is a deterministic function of the inputs, so a behaviour model that can read its
IPV sequence should rank it perfectly. Batches are drawn fresh every step (nothing to
memorise), seeds are pinned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _model_helpers import SIM_SCHEMA
from sklearn.metrics import roc_auc_score

from shoal.client.models import build_model
from shoal.config import ModelConfig

N_CATS = 8  # categories drawn (of the schema's 50)
FRESH = 4  # time-since buckets 1..4 (< 5 minutes) count as "just clicked"


def _batch(g: torch.Generator, B: int = 64, K: int = 10, n: int = 6) -> tuple[dict, torch.Tensor]:
    """Model inputs (``batch_tensors`` layout, no IE) and labels (B, K)."""
    vocab = SIM_SCHEMA.item_vocab

    def feats(shape):  # category in 1..N_CATS, other fields uniform
        cols = [torch.randint(1, N_CATS + 1, shape, generator=g)]
        cols += [torch.randint(1, int(v), shape, generator=g) for v in vocab[1:]]
        return torch.stack(cols, -1)

    cand_feat, ipv_feat = feats((B, K)), feats((B, n))
    ipv_len = torch.randint(0, n + 1, (B,), generator=g)
    ipv_mask = torch.arange(n)[None, :] < ipv_len[:, None]
    acts = [torch.randint(1, int(v), (B, n), generator=g) for v in SIM_SCHEMA.ipv_action_vocab]
    ipv_act = torch.stack(acts, -1) * ipv_mask[..., None]
    fresh = (ipv_act[..., -1] <= FRESH) & ipv_mask  # (B, n)
    same = cand_feat[:, :, None, 0] == ipv_feat[:, None, :, 0]  # (B, K, n)
    y = (same & fresh[:, None, :]).any(-1).float()  # (B, K)
    tb = {
        "cand_item": torch.zeros(B, K, dtype=torch.int64),
        "cand_feat": cand_feat,
        "cand_score": torch.randn(B, K, len(SIM_SCHEMA.score_names), generator=g),
        "cand_mask": torch.ones(B, K, dtype=torch.bool),
        "ie_item": torch.zeros(B, 1, dtype=torch.int64),
        "ie_feat": torch.zeros(B, 1, len(vocab), dtype=torch.int64),
        "ie_act": torch.zeros(B, 1, len(SIM_SCHEMA.ie_action_vocab), dtype=torch.int64),
        "ie_mask": torch.zeros(B, 1, dtype=torch.bool),
        "ipv_item": torch.zeros(B, n, dtype=torch.int64),
        "ipv_feat": ipv_feat * ipv_mask[..., None],
        "ipv_act": ipv_act,
        "ipv_mask": ipv_mask,
    }
    return tb, y


def _train_auc(field_match: bool, steps: int = 150) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="crban-hubsm-ipv",
        hidden=16,
        gru_layers=1,
        attention=16,
        mlp=[16],
        field_match=field_match,
    )
    model = build_model(cfg, SIM_SCHEMA, n_items=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tb, y = _batch(g)
        loss = F.binary_cross_entropy_with_logits(model(tb)[..., 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tb, y = _batch(torch.Generator().manual_seed(99), B=512)
    with torch.no_grad():
        score = model(tb)[..., 0]
    return float(roc_auc_score(y.flatten().numpy(), score.flatten().numpy()))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_field_match_learns_a_recent_same_category_click() -> None:
    with_match, paper = _train_auc(True), _train_auc(False)  # measured: 0.993 and 0.795
    assert with_match > 0.97
    assert with_match > paper + 0.1  # the paper's additive score is still on its plateau
