"""Reranker models (``shoal.client.models``): shapes on every registered model, what each
Table 2 variant holds and sees, padding invariance, gradients and one optimizer step, the
Kuaishou config. Parts against slow loop references: ``test_model_parts.py``; the cloud/device
split, sizes, task targets and score standardization: ``test_model_split.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _builders import tiny_log
from _model_helpers import (
    ALL_MODELS,
    N_ITEMS,
    SIM_SCHEMA,
    _acts,
    _default_inputs,
    _model,
    _modules,
    pad_inputs,
    random_inputs,
    scramble_padding,
)
from torch import nn

from shoal.client.models import (
    EDGEREC_VARIANTS,
    EdgeRecNet,
    KuaishouConfig,
    KuaishouNet,
    Reranker,
    build_model,
)
from shoal.client.models.kuaishou import MMoE, TargetAttention
from shoal.client.models.parts import (
    BehaviourAttention,
    BehaviourBranch,
    DINAttention,
    HUBSMEncoder,
    HUISMEncoder,
    ListContext,
)
from shoal.client.models.reranker import HAS_NEXT, batch_tensors, task_targets
from shoal.config import ModelConfig, SimConfig
from shoal.datasets.kuairand import LABEL_NAMES as KUAIRAND_LABELS
from shoal.datasets.requests import RequestLog
from shoal.datasets.simulator import Simulator

SMALL_SIM = SimConfig(
    users=20, items=300, categories=10, brands=30, candidates=20, page_size=10, max_pages=2
)

# what each model's score depends on: (other candidates, IE sequence, IPV sequence, actions)
SEES = {
    "dnn-rank": (False, False, False, False),
    "dlcm": (True, False, False, False),
    "crban-hubsm-ie": (True, True, False, True),
    "crban-hubsm-ipv": (True, False, True, True),
    "crban-huism": (True, True, True, False),
    "crban-hubsm": (True, True, True, True),
    "edgerec": (True, True, True, True),
    "kuaishou": (True, True, True, True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sim_log() -> RequestLog:
    return Simulator(SMALL_SIM, seed=0).generate()


# ============================================================================ shapes, registry
def test_registry_has_table2_variants_alias_and_kuaishou() -> None:
    assert list(EDGEREC_VARIANTS) == [
        "dnn-rank",
        "dlcm",
        "crban-hubsm-ie",
        "crban-hubsm-ipv",
        "crban-huism",
        "crban-hubsm",
    ]
    assert set(SEES) <= set(ALL_MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(name="no-such-model"), SIM_SCHEMA, N_ITEMS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_on_tiny_log(name: str) -> None:
    log = tiny_log()
    model = _model(name, log.schema, log.n_items)
    tb = batch_tensors(log.batch(np.arange(3)))
    with torch.no_grad():
        logits = model(tb)
        again = model.device(*model.ship(tb))
    assert logits.shape == (3, 3, len(model.tasks))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, again)
    assert model.tasks[0] == "click"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_on_random_and_simulated_batches(name: str, sim_log: RequestLog) -> None:
    model = _model(name)
    with torch.no_grad():
        logits = model.device(*_default_inputs(model))
    assert logits.shape == (6, 7, len(model.tasks))
    assert torch.isfinite(logits).all()

    sim = _model(name, sim_log.schema, sim_log.n_items)
    batch = sim_log.batch(np.arange(min(16, sim_log.n_requests)), ie_len=12, ipv_len=6)
    with torch.no_grad():
        out = sim(batch_tensors(batch))
    assert out.shape == (len(batch), batch.cand_mask.shape[1], len(sim.tasks))
    assert torch.isfinite(out).all()


def test_edgerec_is_an_alias_of_the_full_model() -> None:
    a, b = _model("edgerec"), _model("crban-hubsm")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same architecture


# ============================================================================ Table 2 parts


@pytest.mark.parametrize("name", list(EDGEREC_VARIANTS))
def test_table2_variant_has_exactly_its_parts(name: str) -> None:
    list_ctx, ie, ipv = EDGEREC_VARIANTS[name]
    net = _model(name).device
    assert isinstance(net, EdgeRecNet)
    children = {k for k, v in net.named_children() if v is not None}
    expected = {"candidate", "head"}
    expected |= {"list_context"} if list_ctx else set()
    expected |= {k for k, kind in (("ie", ie), ("ipv", ipv)) if kind != "none"}
    assert children == expected
    assert isinstance(net.list_context, ListContext) == list_ctx
    for branch, kind in ((net.ie, ie), (net.ipv, ipv)):
        if kind == "none":
            assert branch is None
            continue
        assert isinstance(branch, BehaviourBranch) and branch.kind == kind
        enc = HUBSMEncoder if kind == "hubsm" else HUISMEncoder
        assert type(branch.encoder) is enc
    # GRUs: one per list context, two per HUBSM branch, none anywhere else
    n_gru = list_ctx + 2 * [ie, ipv].count("hubsm")
    assert len(_modules(net, nn.GRU)) == n_gru
    # HUISM sees no action or time embedding at all
    assert len(_modules(net, nn.Embedding)) == sum(
        len(v)
        for v, k in ((SIM_SCHEMA.ie_action_vocab, ie), (SIM_SCHEMA.ipv_action_vocab, ipv))
        if k == "hubsm"
    )
    # Bahdanau attention in HUBSM branches, DIN's activation unit in HUISM branches
    assert len(_modules(net, BehaviourAttention)) == [ie, ipv].count("hubsm")
    assert len(_modules(net, DINAttention)) == [ie, ipv].count("huism")
    # head input: e (H), [p̂, s] (2H) with list context, branch outputs (HUBSM +1: attention
    # mass; DIN's unnormalised sum has none)
    H, T = 32, 8
    d = (
        H
        + 2 * H * list_ctx
        + sum({"hubsm": 2 * H + T + 1, "huism": H, "none": 0}[k] for k in (ie, ipv))
    )
    assert net.head[0][0].in_features == d


def test_kuaishou_parts_and_tasks() -> None:
    net = _model("kuaishou").device
    assert isinstance(net, KuaishouNet)
    assert net.tasks == ("click", HAS_NEXT, "favorite")  # sim labels: no long_view / like
    assert net.cfg.ev_task == "click" and net.cfg.like_task == "favorite"
    assert isinstance(net.list_context, ListContext)
    assert isinstance(net.attention, TargetAttention) and net.attention.heads == 4
    assert isinstance(net.head, MMoE)
    assert len(net.head.gates) == len(net.head.towers) == 3
    assert len(net.head.experts) == 4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_sees_what_table2_says(name: str) -> None:
    """Perturb one input group at a time (real slots only) and check whether scores move."""
    other, ie, ipv, actions = SEES[name]
    model = _model(name)
    x = _default_inputs(model)
    g = torch.Generator().manual_seed(5)

    def moved(y: list[torch.Tensor]) -> bool:
        with torch.no_grad():
            a, b = model.device(*x), model.device(*y)
        keep = x[2][..., None].expand_as(a)
        return not torch.allclose(a[keep], b[keep], atol=1e-6)

    # other candidates: change candidates 1.. of every row, look at candidate 0 only
    y = list(x)
    y[0] = x[0].clone()
    y[0][:, 1:] += torch.randn(y[0][:, 1:].shape, generator=g) * x[2][:, 1:, None]
    with torch.no_grad():
        a, b = model.device(*x)[:, 0], model.device(*y)[:, 0]
    assert (not torch.allclose(a, b, atol=1e-6)) == other

    def perturbed(i: int, vocab: tuple[int, ...] | None) -> list[torch.Tensor]:
        y = list(x)
        mask = x[i + 2 - (1 if vocab is not None else 0)]
        if vocab is None:
            y[i] = x[i] + torch.randn(x[i].shape, generator=g) * mask[..., None]
        else:
            y[i] = _acts(vocab, x[i].shape[:2], g) * mask[..., None]
        return y

    assert moved(perturbed(3, None)) == ie  # IE item embeddings
    assert moved(perturbed(6, None)) == ipv
    assert moved(perturbed(4, SIM_SCHEMA.ie_action_vocab)) == (ie and actions)
    assert moved(perturbed(7, SIM_SCHEMA.ipv_action_vocab)) == (ipv and actions)


# ====================================================================== padding invariance
@pytest.mark.parametrize("name", ALL_MODELS)
def test_extra_padding_leaves_real_logits_unchanged(name: str) -> None:
    model = _model(name)
    x = _default_inputs(model)
    y = scramble_padding(pad_inputs(x, 4, 6, 3), SIM_SCHEMA, seed=1)
    with torch.no_grad():
        a, b = model.device(*x), model.device(*y)
    assert b.shape == (6, 11, len(model.tasks))
    real = x[2]
    torch.testing.assert_close(b[:, :7][real], a[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_content_of_padded_slots_changes_nothing(name: str) -> None:
    model = _model(name)
    x = _default_inputs(model)
    with torch.no_grad():
        ref = model.device(*x)
        for seed in (1, 2):
            out = model.device(*scramble_padding(x, SIM_SCHEMA, seed))
            torch.testing.assert_close(out[x[2]], ref[x[2]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_empty_behaviour_sequences(name: str) -> None:
    model = _model(name)
    D = model.cloud.out_dim
    # every request without IE, or without IPV, or without either
    for ie_len, ipv_len in (([0, 0], [2, 1]), ([3, 1], [0, 0]), ([0, 0], [0, 0])):
        x = random_inputs(SIM_SCHEMA, D, [4, 2], ie_len, ipv_len, seed=3, m=3, n=2)
        with torch.no_grad():
            out = model.device(*x)
        assert out.shape == (2, 4, len(model.tasks))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_select_scores_a_subset_of_the_full_list(name: str) -> None:
    """``select`` picks candidates to score; the list context still sees the whole list."""
    model = _model(name)
    x = _default_inputs(model)
    sel = torch.tensor([[6, 0, 2], [1, 0, 0], [4, 3, 0], [5, 0, 1], [0, 3, 2], [0, 0, 0]])
    with torch.no_grad():
        full = model.device(*x)
        part = model.device(*x, select=sel)
    assert part.shape == (6, 3, len(model.tasks))
    want = full.gather(1, sel[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(part, want, atol=1e-6, rtol=0)


# =============================================================================== gradients
def _loss(model: Reranker, tb, target, tmask) -> torch.Tensor:
    logits = model(tb)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * tmask).sum() / tmask.sum()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_one_adam_step_decreases_loss(name: str, sim_log: RequestLog) -> None:
    model = _model(name, sim_log.schema, sim_log.n_items, tasks=["click", "favorite"])
    batch = sim_log.batch(np.arange(min(32, sim_log.n_requests)), ie_len=10, ipv_len=5)
    tb = batch_tensors(batch)
    t, m = task_targets(batch, model.tasks, sim_log.schema)
    target, tmask = torch.from_numpy(t), torch.from_numpy(m).float()
    assert tmask.sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _loss(model, tb, target, tmask)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _loss(model, tb, target, tmask)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_device_parameter_gets_a_gradient(name: str) -> None:
    model = _model(name).train()
    x = random_inputs(SIM_SCHEMA, model.cloud.out_dim, [5, 4, 3], [6, 3, 2], [3, 2, 1], seed=7)
    g = torch.Generator().manual_seed(8)
    logits = model.device(*x)
    target = torch.randint(0, 2, logits.shape, generator=g).float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    (bce * x[2][..., None]).sum().backward()
    dead = [
        k
        for k, p in model.device.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert dead == []


# ============================================================================ Kuaishou config
def _kcfg(labels: tuple[str, ...], **kw) -> KuaishouConfig:
    return KuaishouConfig.from_model_config(
        ModelConfig(name="kuaishou", **kw),
        emb_dim=8,
        n_scores=1,
        ie_action_vocab=(3, 4),
        ipv_action_vocab=(3, 4),
        label_names=labels,
    )


def test_kuaishou_config_on_simulator_labels() -> None:
    cfg = _kcfg(SIM_SCHEMA.label_names)
    assert SIM_SCHEMA.label_names == ("click", "cart", "buy", "favorite", "delete")
    assert cfg.tasks == ("click", HAS_NEXT, "favorite")
    assert cfg.ev_task == "click" and cfg.like_task == "favorite"


def test_kuaishou_config_on_kuairand_labels() -> None:
    assert KUAIRAND_LABELS[:3] == ("click", "long_view", "like")
    cfg = _kcfg(KUAIRAND_LABELS)
    assert cfg.tasks == ("click", HAS_NEXT, "long_view", "like")
    assert cfg.ev_task == "long_view" and cfg.like_task == "like"
    # favorite is asked for but KuaiRand has no such label; like wins over favorite anyway
    cfg = _kcfg((*KUAIRAND_LABELS, "favorite"))
    assert cfg.tasks == ("click", HAS_NEXT, "long_view", "like", "favorite")
    assert cfg.like_task == "like"


def test_kuaishou_config_click_only_and_task_order() -> None:
    cfg = _kcfg(("click",))
    assert cfg.tasks == ("click", HAS_NEXT) and cfg.ev_task == "click" and cfg.like_task is None
    cfg = _kcfg(SIM_SCHEMA.label_names, tasks=["delete", "click", "buy"], beam=2, beam_depth=3)
    assert cfg.tasks == ("click", HAS_NEXT, "delete", "buy")
    assert cfg.like_task is None and (cfg.beam, cfg.beam_depth) == (2, 3)
    assert (cfg.alpha, cfg.beta) == (1.0, 0.5)


def test_kuaishou_config_rejects_bad_tasks() -> None:
    base = dict(emb_dim=4, n_scores=1, ie_action_vocab=(3,), ipv_action_vocab=(3,))
    with pytest.raises(ValueError, match="has_next"):
        KuaishouConfig(**base, tasks=("click", "like"))
    with pytest.raises(ValueError, match="click"):
        KuaishouConfig(**base, tasks=(HAS_NEXT, "click"))
    with pytest.raises(ValueError, match="long_view"):
        KuaishouConfig(**base, ev_task="long_view")
    with pytest.raises(ValueError, match="heads"):
        KuaishouConfig(**base, hidden=10, heads=4)


def test_kuaishou_tasks_follow_the_schema() -> None:
    schema = dataclasses.replace(SIM_SCHEMA, label_names=KUAIRAND_LABELS)
    net = _model("kuaishou", schema).device
    x = _default_inputs(_model("kuaishou"))
    with torch.no_grad():
        out = net(*x)
    assert net.tasks == ("click", HAS_NEXT, "long_view", "like")
    assert out.shape == (6, 7, 4)
