"""ONNX export of the device networks: ONNX Runtime equals PyTorch for every registered model,
at shapes other than the export shapes (dynamic B, K, m, n), on random inputs with padded rows
and empty sequences and on a gathered batch of the tiny log; the rerank and step graphs equal
their PyTorch methods; the graphs hold no cloud embedding table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _builders import tiny_log, tiny_schema
from onnx import numpy_helper

from shoal.client.export import (
    RERANK_INPUT_NAMES,
    STEP_INPUT_NAMES,
    export_device,
    export_onnx,
    export_rerank_onnx,
    export_step_onnx,
    onnx_session,
    random_inputs,
    rerank_inputs,
    run_onnx,
)
from shoal.client.models import INPUT_NAMES, EdgeRecNet, build_model
from shoal.client.models.parts import HUBSMEncoder
from shoal.client.models.reranker import Reranker, batch_tensors
from shoal.config import ModelConfig
from shoal.registry import MODELS

ATOL = 1e-5
N_ITEMS = 3  # the tiny log's catalog
RUN_SHAPES = [(3, 11, 9, 6), (1, 1, 1, 1), (4, 20, 3, 13)]  # (B, K, m, n), export is (2, 7, 5, 4)


def _model(name: str, n_items: int = N_ITEMS, id_dim: int = 0, **kw) -> Reranker:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, id_dim=id_dim, **kw)
    return build_model(cfg, tiny_schema(), n_items).eval()


def _close(onnx_out: np.ndarray, ref: torch.Tensor) -> None:
    assert onnx_out.shape == tuple(ref.shape)
    np.testing.assert_allclose(onnx_out, ref.detach().numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", MODELS.names())
def test_onnx_matches_pytorch_at_other_shapes(name: str, tmp_path) -> None:
    model = _model(name)
    net = model.device
    sess = onnx_session(export_onnx(net, tmp_path / "device.onnx"))
    kept = [i.name for i in sess.get_inputs()]
    assert set(kept) <= set(INPUT_NAMES) and {"cand_emb", "cand_score"} <= set(kept)
    g = torch.Generator().manual_seed(1)
    for B, K, m, n in RUN_SHAPES:
        x = random_inputs(net, B, K, m, n, generator=g)
        if B > 1:
            assert not x[5][1].any() and not x[8][1].any()  # row 1: empty IE and IPV
        with torch.no_grad():
            ref = net(*x)  # (B, K, T)
        _close(run_onnx(sess, dict(zip(INPUT_NAMES, x)))["logits"], ref)
    # a gathered batch of real requests, through the cloud part's lookups
    log = tiny_log()
    x = model.ship(batch_tensors(log.batch(np.arange(log.n_requests), ie_len=6, ipv_len=3)))
    with torch.no_grad():
        ref = net(*x)
    _close(run_onnx(sess, dict(zip(INPUT_NAMES, x)))["logits"], ref)


def test_graph_axes_are_symbolic(tmp_path) -> None:
    sess = onnx_session(export_onnx(_model("crban-hubsm").device, tmp_path / "d.onnx"))
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["cand_emb"][:2] == ["B", "K"]
    assert shapes["ie_act"][:2] == ["B", "m"]
    assert shapes["ipv_mask"] == ["B", "n"]
    assert sess.get_outputs()[0].shape == ["B", "K", 1]


def test_model_without_behaviour_branch_drops_unused_inputs(tmp_path) -> None:
    net = _model("dnn-rank").device
    sess = onnx_session(export_onnx(net, tmp_path / "d.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["cand_emb", "cand_score"]
    x = random_inputs(net, 2, 5, 3, 2)
    with torch.no_grad():
        ref = net(*x)
    _close(run_onnx(sess, dict(zip(INPUT_NAMES, x)))["logits"], ref)  # extra inputs ignored


@pytest.mark.parametrize("field_match", [False, True])
@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in ("kuaishou", "edgerec")])
def test_rerank_graph_matches_pytorch(name: str, field_match: bool, tmp_path) -> None:
    # with field_match and an id table: field slices of unequal sizes (8, ..., 8, 4)
    net = _model(name, id_dim=4 * field_match, field_match=field_match).device
    assert isinstance(net, EdgeRecNet)
    sess = onnx_session(export_rerank_onnx(net, tmp_path / "rerank.onnx"))
    g = torch.Generator().manual_seed(2)
    for B, K, m, n in RUN_SHAPES:
        x = random_inputs(net, B, K, m, n, generator=g)
        rx = rerank_inputs(net, x)
        with torch.no_grad():
            full = net(*x)
        out = run_onnx(sess, dict(zip(RERANK_INPUT_NAMES, rx)))["logits"]
        _close(out, full)  # rerank from encodings == full forward


@pytest.mark.parametrize("kind", ["ie", "ipv"])
def test_step_graph_matches_pytorch(kind: str, tmp_path) -> None:
    enc = getattr(_model("crban-hubsm").device, kind).encoder
    assert isinstance(enc, HUBSMEncoder)
    sess = onnx_session(export_step_onnx(enc, tmp_path / "step.onnx"))
    assert [i.name for i in sess.get_inputs()] == list(STEP_INPUT_NAMES)
    g = torch.Generator().manual_seed(3)
    for B in (1, 3, 5):
        emb = torch.randn(B, enc.item_gru.input_size, generator=g)
        act = torch.stack(
            [torch.randint(1, t.num_embeddings, (B,), generator=g) for t in enc.actions.tables],
            dim=-1,
        )
        state = torch.randn(2, enc.layers, B, enc.hidden, generator=g)
        with torch.no_grad():
            e, s = enc.step(emb, act, state)
        out = run_onnx(sess, {"emb": emb, "act": act, "state": state})
        _close(out["enc"], e)
        _close(out["new_state"], s)


def test_export_device_writes_every_graph(tmp_path) -> None:
    paths = export_device(_model("crban-hubsm").device, tmp_path / "m")
    assert sorted(paths) == ["device", "ie_step", "ipv_step", "rerank"]
    assert all(p.is_file() for p in paths.values())
    assert sorted(export_device(_model("crban-huism").device, tmp_path / "h")) == [
        "device",
        "rerank",
    ]
    assert sorted(export_device(_model("kuaishou").device, tmp_path / "k")) == ["device"]


@pytest.mark.parametrize("name", ["crban-hubsm", "kuaishou", "dnn-rank"])
def test_graph_holds_device_weights_only(name: str, tmp_path) -> None:
    n_items = 20_000
    model = _model(name, n_items, id_dim=16)  # a catalog-size item-id table in the cloud part
    net = model.device
    with torch.no_grad():  # as after training: no two weights equal (the exporter would merge
        for p in net.parameters():  # the field weights of IE and IPV, both ones at init)
            p.add_(torch.randn_like(p) * 0.01)
    path = export_onnx(net, tmp_path / "d.onnx")
    weights = onnx.load(str(path)).graph.initializer
    arrays = [numpy_helper.to_array(w) for w in weights]
    # every device parameter and buffer, and nothing else of weight size
    assert sum(a.nbytes for a in arrays if a.size > 1) <= net.size_bytes()
    assert sum(a.nbytes for a in arrays) >= net.size_bytes()
    assert not any(a.ndim and a.shape[0] == n_items + 1 for a in arrays)  # no item-id table
    cloud_bytes = sum(p.numel() * p.element_size() for p in model.cloud.parameters())
    size = path.stat().st_size
    assert net.size_bytes() <= size <= 1.2 * net.size_bytes() + 64 * 1024
    assert size < cloud_bytes


def test_run_onnx_rejects_missing_inputs_and_wrong_dtypes(tmp_path) -> None:
    net = _model("crban-hubsm").device
    sess = onnx_session(export_onnx(net, tmp_path / "d.onnx"))
    feed = dict(zip(INPUT_NAMES, random_inputs(net)))
    with pytest.raises(ValueError, match="'ie_act' is missing"):
        run_onnx(sess, {k: v for k, v in feed.items() if k != "ie_act"})
    with pytest.raises(ValueError, match="'ie_act' has dtype int32"):
        run_onnx(sess, feed | {"ie_act": feed["ie_act"].int()})


def test_export_rejects_bad_arguments(tmp_path) -> None:
    net = _model("kuaishou").device
    with pytest.raises(TypeError, match="DeviceNetwork"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="expected 9 inputs"):
        export_onnx(net, tmp_path / "x.onnx", example_inputs=random_inputs(net)[:8])
    with pytest.raises(TypeError, match="EdgeRecNet only"):
        export_rerank_onnx(net, tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="HUBSMEncoder only"):
        export_step_onnx(net, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        onnx_session(tmp_path / "x.onnx", threads=0)
    with pytest.raises(ValueError, match="optimization must be one of"):
        onnx_session(tmp_path / "x.onnx", optimization="max")
    with pytest.raises(ValueError, match="no ONNX file"):
        onnx_session(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="must be >= 1"):
        random_inputs(net, K=0)


def test_export_leaves_training_mode_alone(tmp_path) -> None:
    net = _model("dlcm").device.train()
    export_onnx(net, tmp_path / "d.onnx")
    assert net.training
