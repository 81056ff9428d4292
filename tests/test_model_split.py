"""The cloud/device split of the rerankers (catalog tables stay in the cloud, device sizes,
what ``ship`` sends), task targets from the labels, and score standardization."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _builders import tiny_log, tiny_schema
from _model_helpers import ALL_MODELS, SIM_SCHEMA, _model, _modules
from torch import nn

from shoal.client.models import INPUT_NAMES, build_model
from shoal.client.models.parts import CandidateEncoder
from shoal.client.models.reranker import HAS_NEXT, batch_tensors, score_stats, task_targets
from shoal.config import ModelConfig, SimConfig

# device-network bytes with the default ModelConfig on the default simulator schema
# (quoted in docs/models.md; update both together)
FIELD_W = 6 * 4  # field match: one float32 weight per item field (6) per behaviour branch
DEVICE_BYTES = {
    "dnn-rank": 10_900,
    "dlcm": 95_124,
    "crban-hubsm-ie": 270_244 + FIELD_W,
    "crban-hubsm-ipv": 277_812 + FIELD_W,
    "crban-huism": 140_948 + 2 * FIELD_W,  # DIN unit: 2 × (1024 weights) - head 2 × 32
    "crban-hubsm": 452_932 + 2 * FIELD_W,
    "edgerec": 452_932 + 2 * FIELD_W,
    "kuaishou": 201_916,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ===================================================================== cloud / device split
@pytest.mark.parametrize("name", ALL_MODELS)
def test_device_holds_no_catalog_table(name: str) -> None:
    n_items = 5000
    model = _model(name, n_items=n_items, id_dim=16)  # with an item-id table (default: none)
    max_action = max(SIM_SCHEMA.ie_action_vocab + SIM_SCHEMA.ipv_action_vocab)
    dev_tables = _modules(model.device, nn.Embedding)
    assert all(t.num_embeddings <= max_action for t in dev_tables)
    cloud_tables = _modules(model.cloud, nn.Embedding)
    sizes = sorted(t.num_embeddings for t in cloud_tables)
    assert sizes == sorted([*SIM_SCHEMA.item_vocab, n_items + 1])
    # every item-sized table of the whole model is in the cloud part
    assert {id(t) for t in _modules(model, nn.Embedding) if t.num_embeddings > max_action} == {
        id(t) for t in cloud_tables if t.num_embeddings > max_action
    }
    assert model.cloud.out_dim == 8 * len(SIM_SCHEMA.item_vocab) + 16
    dev_params = {id(p) for p in model.device.parameters()}
    assert not dev_params & {id(p) for p in model.cloud.parameters()}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_size_bytes_is_parameters_plus_buffers(name: str) -> None:
    net = _model(name).device
    want = 0
    for _, p in net.named_parameters():
        want += p.numel() * 4
    for _, b in net.named_buffers():
        want += b.numel() * 4
    assert net.size_bytes() == want
    assert len(list(net.buffers())) == 2  # score mean and std ship with the network


@pytest.mark.parametrize("name", ALL_MODELS)
def test_device_size_with_default_config(name: str) -> None:
    model = build_model(ModelConfig(name=name), SIM_SCHEMA, SimConfig().items)
    assert model.device.size_bytes() == DEVICE_BYTES[name]
    assert model.device.size_bytes() < 1_000_000


def test_ship_looks_up_the_cloud_tables() -> None:
    log = tiny_log()
    model = _model("crban-hubsm", log.schema, log.n_items, id_dim=16)
    tb = batch_tensors(log.batch(np.arange(3)))
    shipped = model.ship(tb)
    assert len(shipped) == len(INPUT_NAMES)
    cl = model.cloud
    b, k = 2, 1
    item, feat = tb["cand_item"][b, k], tb["cand_feat"][b, k]
    want = torch.cat(
        [cl.fields[0].weight[feat[0]], cl.fields[1].weight[feat[1]], cl.item_id.weight[item]]
    )
    torch.testing.assert_close(shipped[0][b, k], want, atol=0, rtol=0)
    # padding looks up zeros
    assert torch.equal(shipped[3][0, 10], torch.zeros(cl.out_dim))
    for i in (1, 2, 4, 5, 7, 8):
        assert shipped[i] is tb[INPUT_NAMES[i]]


# ============================================================================== task targets
def test_task_targets_on_tiny_log() -> None:
    log = tiny_log()
    batch = log.batch(np.arange(3))
    target, mask = task_targets(batch, ("click", HAS_NEXT, "buy"), log.schema)
    assert target.dtype == np.float32 and mask.dtype == np.bool_
    assert target.shape == mask.shape == (3, 3, 3)
    obs = [[1, 1, 0], [0, 0, 0], [1, 1, 0]]
    assert mask[..., 0].astype(int).tolist() == obs
    assert np.array_equal(mask[..., 1], mask[..., 0]) and np.array_equal(mask[..., 2], mask[..., 0])
    assert target[..., 0].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    # r0: candidate 0 observed and candidate 1 after it observed; candidate 1 is the last
    assert target[..., 1].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert target[..., 2].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_has_next_hand_computed() -> None:
    batch = tiny_log().batch(np.arange(1))
    obs = np.array(
        [
            [1, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1],
            [1, 0, 0, 0, 1],
        ],
        bool,
    )
    want = [
        [1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]
    b = dataclasses.replace(batch, label_mask=obs, label=np.zeros((6, 5, 2), np.int8))
    target, mask = task_targets(b, (HAS_NEXT,), tiny_schema())
    assert target[..., 0].astype(int).tolist() == want
    assert np.array_equal(mask[..., 0], obs)
    # reference: observed and some strictly later candidate observed
    ref = [[bool(o[k] and o[k + 1 :].any()) for k in range(5)] for o in obs]
    assert target[..., 0].astype(bool).tolist() == ref


def test_task_targets_pick_label_columns_by_name() -> None:
    batch = tiny_log().batch(np.arange(1))
    label = np.zeros((1, 3, 2), np.int8)
    label[0, :, 0] = [1, 0, 0]  # click
    label[0, :, 1] = [0, 0, 1]  # buy
    b = dataclasses.replace(batch, label=label, label_mask=np.ones((1, 3), bool))
    target, _ = task_targets(b, ("buy", "click"), tiny_schema())
    assert target[0].T.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="like"):
        task_targets(b, ("click", "like"), tiny_schema())


# ========================================================================= score statistics
def test_score_stats_and_standardization() -> None:
    batch = tiny_log().batch(np.arange(3))
    mean, std = score_stats(batch)
    real = np.array([0.9, 0.8, 0.7, 0.7, 0.4, 0.3, 0.2], np.float32).astype(np.float64)
    assert mean.dtype == torch.float32 and mean.shape == (1,)
    np.testing.assert_allclose(mean.numpy(), [real.mean()], rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), [real.std()], rtol=1e-6)  # population std

    torch.manual_seed(0)
    enc = CandidateEncoder(emb_dim=2, n_scores=1, hidden=3)
    enc.set_score_stats(mean, std)
    emb = torch.randn(1, 7, 2)
    score = torch.tensor(real, dtype=torch.float32).view(1, 7, 1)
    z = (score - mean) / std
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std(unbiased=False)) - 1) < 1e-5
    with torch.no_grad():
        want = torch.relu(enc.proj(torch.cat([emb, z], -1)))
        torch.testing.assert_close(enc(emb, score), want, atol=1e-6, rtol=0)

    # zero std is clamped; a batch without real candidates gives the identity transform
    enc.set_score_stats(torch.tensor([2.0]), torch.tensor([0.0]))
    assert float(enc.score_std) == pytest.approx(1e-6)
    empty = dataclasses.replace(batch, cand_mask=np.zeros_like(batch.cand_mask))
    m0, s0 = score_stats(empty)
    assert m0.tolist() == [0.0] and s0.tolist() == [1.0]


@pytest.mark.parametrize("name", ["dnn-rank", "crban-hubsm", "kuaishou"])
def test_device_set_score_stats_ships_in_state_dict(name: str) -> None:
    net = _model(name).device
    net.set_score_stats(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    sd = net.state_dict()
    assert sd["candidate.score_mean"].tolist() == [1.0, 2.0]
    assert sd["candidate.score_std"].tolist() == [3.0, 4.0]
