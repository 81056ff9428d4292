"""Incremental behaviour encoding on the device (``shoal.client.runtime``): one GRU step per
behaviour reproduces the full-sequence encoding within the cap (IE and IPV, PyTorch and ONNX
steps, across a state_dict round trip); reranking from the state equals the full forward on
the tiny log's requests; beyond the cap the ring holds the running-state encodings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _builders import tiny_log, tiny_schema

from shoal.client.export import (
    RERANK_INPUT_NAMES,
    export_rerank_onnx,
    export_step_onnx,
    onnx_session,
    random_inputs,
    run_onnx,
)
from shoal.client.models import INPUT_NAMES, EdgeRecNet, build_model
from shoal.client.models.reranker import Reranker, batch_tensors
from shoal.client.runtime import BehaviourState, SequenceState, onnx_step
from shoal.config import ModelConfig

ATOL = 1e-5
IE_LEN, IPV_LEN = 6, 4


def _model(name: str = "crban-hubsm", **kw) -> Reranker:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **kw), tiny_schema(), 3).eval()


def _sequences(net: EdgeRecNet, m: int, n: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """One full request (row 0 of random_inputs): cand (1, K, .), ie (1, m, .), ipv (1, n, .)."""
    x = random_inputs(net, 1, 9, m, n, generator=torch.Generator().manual_seed(seed))
    assert x[5].all() and x[8].all()
    return x


def _push_all(state: BehaviourState, x: tuple[torch.Tensor, ...], start: int = 0, stop=None):
    """Push IE slots then IPV slots [start, stop) of row 0 (time = slot index)."""
    for kind, emb, act in (("ie", x[3], x[4]), ("ipv", x[6], x[7])):
        for j in range(start, min(stop or emb.shape[1], emb.shape[1])):
            state.push(kind, emb[0, j], act[0, j, :-1], float(j))


def _check_encodings(state: BehaviourState, net: EdgeRecNet, x: tuple[torch.Tensor, ...]):
    with torch.no_grad():
        ie, ipv = net.encode(x[3], x[4], x[6], x[7])  # (1, m, E), (1, n, E)
    for kind, full in (("ie", ie), ("ipv", ipv)):
        if full is None:
            assert kind not in state.sequences
            continue
        enc, _, mask = state.sequences[kind].encodings()
        T = full.shape[1]
        assert mask[:T].all() and not mask[T:].any()
        torch.testing.assert_close(enc[:T], full[0], rtol=0, atol=ATOL)
        assert not enc[T:].any()


@pytest.mark.parametrize("field_match", [False, True])
@pytest.mark.parametrize("name", ["crban-hubsm", "crban-hubsm-ie", "crban-huism"])
def test_stepwise_equals_full_sequence_encoding(name: str, field_match: bool) -> None:
    net = _model(name, field_match=field_match).device
    for m, n in ((IE_LEN, IPV_LEN), (3, 1)):  # full caps and partly filled ones
        x = _sequences(net, m, n)
        state = BehaviourState(net, IE_LEN, IPV_LEN)
        _push_all(state, x)
        _check_encodings(state, net, x)
        assert all(s.count == (m if k == "ie" else n) for k, s in state.sequences.items())


def test_state_dict_round_trip_mid_sequence(tmp_path) -> None:
    net = _model().device
    x = _sequences(net, IE_LEN, IPV_LEN)
    first = BehaviourState(net, IE_LEN, IPV_LEN)
    _push_all(first, x, stop=2)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = BehaviourState(net, IE_LEN, IPV_LEN)
    second.load_state_dict(torch.load(tmp_path / "state.pt"))
    _push_all(second, x, start=2)
    _check_encodings(second, net, x)
    # a full ring survives the round trip too, and keeps advancing in the right slots
    third = BehaviourState(net, IE_LEN, IPV_LEN)
    third.load_state_dict(second.state_dict())
    for k in ("ie", "ipv"):
        a, b = second.sequences[k].encodings(), third.sequences[k].encodings()
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_onnx_step_equals_pytorch_step(tmp_path) -> None:
    net = _model().device
    steps = {
        k: onnx_step(onnx_session(export_step_onnx(getattr(net, k).encoder, tmp_path / k)))
        for k in ("ie", "ipv")
    }
    x = _sequences(net, IE_LEN, IPV_LEN)
    state = BehaviourState(net, IE_LEN, IPV_LEN, steps=steps)
    _push_all(state, x)
    _check_encodings(state, net, x)


@pytest.mark.parametrize("field_match", [False, True])
def test_rerank_from_state_equals_full_forward_on_tiny_log(field_match: bool, tmp_path) -> None:
    model = _model(field_match=field_match)
    net = model.device
    log = tiny_log()
    decay = log.schema.decay_action
    sess = onnx_session(export_rerank_onnx(net, tmp_path / "rerank.onnx"))
    for r in range(log.n_requests):
        x = model.ship(batch_tensors(log.batch(np.array([r]), IE_LEN, IPV_LEN)))
        with torch.no_grad():
            full = net(*x)  # (1, K, 1)
        state = BehaviourState(net, IE_LEN, IPV_LEN)
        u = log.req_user[r]
        for kind, emb, act, mask in (("ie", x[3], x[4], x[5]), ("ipv", x[6], x[7], x[8])):
            start = getattr(log, f"{kind}_offsets")[u]
            times = getattr(log, f"{kind}_time")
            for j in range(int(mask[0].sum())):  # the user's events before the request
                state.push(kind, emb[0, j], act[0, j, :-1], times[start + j])
        now = float(log.req_time[r])
        torch.testing.assert_close(state.rerank(*x[:3], now, decay), full, rtol=0, atol=ATOL)
        feed = dict(zip(INPUT_NAMES[:3], x[:3])) | state.rerank_inputs(now, decay)
        out = run_onnx(sess, feed)["logits"]
        np.testing.assert_allclose(out, full.numpy(), rtol=0, atol=ATOL)
        since = state.rerank_inputs(now, decay)
        assert torch.equal(since["ie_since"], x[4][..., -1])  # same buckets as the log's gather
        assert torch.equal(since["ipv_since"], x[7][..., -1])


def test_rerank_from_empty_state_equals_forward_with_empty_sequences() -> None:
    net = _model().device
    x = list(random_inputs(net, 1, 5, IE_LEN, IPV_LEN))
    for i in (3, 4, 5, 6, 7, 8):
        x[i] = torch.zeros_like(x[i])  # empty sequences
    with torch.no_grad():
        full = net(*x)
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    out = state.rerank(*x[:3], now=0.0, decay=tiny_schema().decay_action)
    torch.testing.assert_close(out, full, rtol=0, atol=ATOL)
    feed = state.rerank_inputs(0.0, tiny_schema().decay_action)
    assert set(feed) == set(RERANK_INPUT_NAMES[3:])


def test_beyond_cap_ring_holds_running_state_encodings() -> None:
    """Past the cap the device keeps the GRU's running state: its slots equal the encoding of
    the whole history (last ``cap`` slots), not training's re-encoding of the last ``cap``."""
    net = _model().device
    total = 2 * IE_LEN + 1
    x = _sequences(net, total, IPV_LEN)
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    _push_all(state, x)
    seq = state.sequences["ie"]
    enc, time, mask = seq.encodings()
    assert seq.count == total and mask.all()
    assert time.tolist() == [float(j) for j in range(total - IE_LEN, total)]  # oldest first
    with torch.no_grad():
        whole = net.ie.encode(x[3], x[4])[0, -IE_LEN:]  # GRU over all `total` behaviours
        window = net.ie.encode(x[3][:, -IE_LEN:], x[4][:, -IE_LEN:])[0]  # training's view
    torch.testing.assert_close(enc, whole, rtol=0, atol=ATOL)
    assert (enc - window).abs().max() > 1e-3  # the documented train/serve difference


def test_reset_forgets_everything() -> None:
    net = _model().device
    x = _sequences(net, IE_LEN, IPV_LEN)
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    _push_all(state, x)
    state.reset()
    _push_all(state, x, stop=3)
    assert all(s.count == 3 for s in state.sequences.values())
    for k, emb, act in (("ie", x[3], x[4]), ("ipv", x[6], x[7])):
        with torch.no_grad():
            ref = getattr(net, k).encode(emb[:, :3], act[:, :3])[0]  # from a zero state
        torch.testing.assert_close(state.sequences[k].encodings()[0][:3], ref, rtol=0, atol=ATOL)


def test_absent_branch_ignores_its_behaviours() -> None:
    net = _model("crban-hubsm-ie").device
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    assert set(state.sequences) == {"ie"}
    assert state.push("ipv", torch.zeros(32), torch.ones(1, dtype=torch.long), 0.0) is None
    assert set(state.state_dict()) == {"ie"}


def test_push_validates_its_inputs() -> None:
    net = _model().device
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    D = net.cfg.emb_dim
    act = torch.ones(2, dtype=torch.long)  # tiny schema: 2 stored IE actions
    with pytest.raises(ValueError, match="sequence must be one of"):
        state.push("clicks", torch.zeros(D), act, 0.0)
    with pytest.raises(ValueError, match=rf"emb must be a float tensor of shape \({D},\)"):
        state.push("ie", torch.zeros(D + 1), act, 0.0)
    with pytest.raises(ValueError, match="no time-since column"):
        state.push("ie", torch.zeros(D), torch.ones(3, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="no time-since column"):
        state.push("ie", torch.zeros(D), act.float(), 0.0)
    state.push("ie", torch.zeros(D), act, 10.0)
    with pytest.raises(ValueError, match="time order"):
        state.push("ie", torch.zeros(D), act, 9.0)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        SequenceState(net.ie, 0, 2)
    with pytest.raises(TypeError, match="EdgeRecNet only"):
        BehaviourState(_model("kuaishou").device)
    with pytest.raises(ValueError, match="steps keys"):
        BehaviourState(net, steps={"clicks": lambda *a: a})


def test_load_state_dict_rejects_mismatches_and_changes_nothing() -> None:
    net = _model().device
    x = _sequences(net, IE_LEN, IPV_LEN)
    state = BehaviourState(net, IE_LEN, IPV_LEN)
    _push_all(state, x, stop=2)
    good = state.state_dict()
    before = state.sequences["ie"].encodings()[0].clone()

    other_cap = BehaviourState(net, IE_LEN + 1, IPV_LEN).state_dict()
    with pytest.raises(ValueError, match=r"ie: sequence state 'enc' must be a tensor of shape"):
        state.load_state_dict(other_cap)
    bad_gru = {"ie": good["ie"], "ipv": {**good["ipv"], "gru": torch.zeros(2, 1, 1, 32)}}
    with pytest.raises(ValueError, match=r"ipv: sequence state 'gru'"):
        state.load_state_dict(bad_gru)
    with pytest.raises(ValueError, match="must have keys"):
        state.load_state_dict({"ie": good["ie"]})
    with pytest.raises(ValueError, match="must have keys"):
        state.load_state_dict({"ie": {"count": 1}, "ipv": good["ipv"]})
    with pytest.raises(ValueError, match="'count' must be an int"):
        state.load_state_dict({**good, "ie": {**good["ie"], "count": -1}})
    assert state.sequences["ie"].count == 2
    torch.testing.assert_close(state.sequences["ie"].encodings()[0], before, rtol=0, atol=0)
