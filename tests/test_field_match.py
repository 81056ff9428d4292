"""The attention's field match (``model.field_match``) learns what the paper's attention does
not within a short budget: "the candidate's category was clicked in the last few minutes".

The label is a deterministic function of the inputs, so a behaviour model that can read its
IPV sequence should rank it perfectly. Batches are drawn fresh every step (nothing to
memorise), seeds are pinned."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from _model_helpers import SIM_SCHEMA, random_inputs
from sklearn.metrics import roc_auc_score

from shoal.client.models import build_model, matched_fields
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


# ============================================================ which fields the match compares
def _kuairand_like(n_items: int = 7350):
    """A schema whose second field is nearly an item id (KuaiRand's author: 6,341 values)."""
    return dataclasses.replace(
        SIM_SCHEMA, item_fields=("tag", "author", "video_type"), item_vocab=(31, 6342, 4)
    )


def test_automatic_selection_leaves_out_identity_like_fields(caplog) -> None:
    mc = ModelConfig()
    # the simulator: 50 categories, 1,000 brands, ... for 20,000 items: every field is matched
    assert matched_fields(mc, SIM_SCHEMA, 20_000) == tuple(range(len(SIM_SCHEMA.item_vocab)))
    # 6,341 authors for 7,350 items (86% >= 50%): author is left out; so is an item-id slice
    assert matched_fields(mc, _kuairand_like(), 7350) == (0, 2)
    mc_id = ModelConfig(id_dim=4)
    assert matched_fields(mc_id, _kuairand_like(), 7350) == (0, 2)
    # the boundary: 3,674 / 7,350 values (< half) is matched, 3,675 (= half) is not
    for v, kept in ((3675, True), (3676, False)):
        s = dataclasses.replace(_kuairand_like(), item_vocab=(31, v, 4))
        assert (1 in matched_fields(mc, s, 7350)) is kept
    # a toy catalog where every field is that fine: all of them, with a warning
    with caplog.at_level(logging.WARNING, logger="shoal.client.models"):
        assert matched_fields(mc, _kuairand_like(), 3) == (0, 1, 2)
    assert "compares all of them" in caplog.text


def test_named_selection_and_bad_names() -> None:
    s = _kuairand_like()
    assert matched_fields(ModelConfig(match_fields=["author", "tag"]), s, 7350) == (0, 1)
    assert matched_fields(ModelConfig(id_dim=4, match_fields=["item_id"]), s, 7350) == (3,)
    with pytest.raises(ValueError, match=r"\['brand'\], not item fields"):
        matched_fields(ModelConfig(match_fields=["tag", "brand"]), s, 7350)
    with pytest.raises(ValueError, match="item_id"):  # no id slice without id_dim
        matched_fields(ModelConfig(match_fields=["item_id"]), s, 7350)
    with pytest.raises(ValueError, match="match_fields is empty"):
        matched_fields(ModelConfig(match_fields=[]), s, 7350)


@pytest.mark.parametrize("name", ["crban-hubsm", "crban-huism"])
def test_left_out_field_is_neither_stored_nor_compared(name: str) -> None:
    """With author left out, each slot stores the unit embeddings of tag and video_type only,
    there is one field weight per matched field, and the logits equal those of a network whose
    field match is told explicitly to compare (tag, video_type)."""
    s = _kuairand_like()
    auto = build_model(ModelConfig(name=name), s, 7350)
    named = build_model(ModelConfig(name=name, match_fields=["video_type", "tag"]), s, 7350)
    for branch in (auto.device.ie, auto.device.ipv):
        assert branch.matched == (8, 8)
        assert branch.attention.field_scale.weight.shape == (2,)
    named.load_state_dict(auto.state_dict())
    x = random_inputs(s, 24, [5, 3], [4, 2], [3, 0], seed=0)
    with torch.no_grad():
        ie_enc, _ = auto.device.encode(x[3], x[4], x[6], x[7])
        D = 8 * 3
        unit = ie_enc[..., -16:]
        want = torch.cat(
            [F.normalize(x[3][..., sl], dim=-1) for sl in (slice(0, 8), slice(16, D))], -1
        )
        torch.testing.assert_close(unit, want * x[5][..., None], atol=1e-6, rtol=0)
        torch.testing.assert_close(auto.device(*x), named.device(*x), atol=0, rtol=0)
