"""Centralized training: labelled-candidate selection, loss, validation split, early stopping,
checkpoints, ``shoal train`` and the Table 2 experiment's bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shoal.cli import main
from shoal.client.checkpoint import load_reranker, save_reranker
from shoal.client.models import build_model
from shoal.client.models.reranker import batch_tensors, labelled_index, task_targets
from shoal.client.training import SeqLens, batch_loss, evaluate, predict
from shoal.config import ModelConfig, TrainConfig, load_config
from shoal.datasets import load_dataset
from shoal.datasets.splits import TEST, assign_splits
from shoal.experiments import edgerec_table2 as t2
from shoal.experiments.train import train
from shoal.server.training import fit, make_splits, validation_split

TINY = [
    "sim.users=40",
    "sim.items=400",
    "sim.candidates=20",
    "sim.page_size=10",
    "sim.brands=50",
    "seq.ie_len=8",
    "seq.ipv_len=4",
    "model.hidden=8",
    "model.gru_layers=1",
    "model.attention=8",
    "model.mlp=[8]",
    "train.batch=32",
    "train.eval_batch=64",
]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(overrides=TINY)
    return cfg, load_dataset(cfg)


def test_labelled_index_left_aligns_labelled_positions() -> None:
    mask = np.array([[False, True, False, True], [False, False, False, False], [True] * 4])
    sel, m = labelled_index(mask)
    assert sel.shape == (3, 4)
    assert sel[0, :2].tolist() == [1, 3] and m[0].tolist() == [True, True, False, False]
    assert not m[1].any()
    assert sel[2].tolist() == [0, 1, 2, 3] and m[2].all()


def test_batch_loss_equals_masked_bce_over_all_candidates(tiny) -> None:
    _cfg, log = tiny
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="crban-hubsm", hidden=8, gru_layers=1), log.schema, 400)
    b = log.batch(np.arange(16), 8, 4)
    loss, n = batch_loss(model, b, log.schema)
    logits = model(batch_tensors(b))  # all candidates
    target, mask = task_targets(b, model.tasks, log.schema)
    m = torch.from_numpy(mask)
    ref = F.binary_cross_entropy_with_logits(logits[m], torch.from_numpy(target)[m])
    assert n == int(b.label_mask.sum()) > 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_validation_split_moves_whole_pages(tiny) -> None:
    _, log = tiny
    idx = np.arange(log.n_requests)
    tr, va = validation_split(log, idx, 0.25, np.random.default_rng(0))
    assert np.intersect1d(tr, va).size == 0 and tr.size + va.size == idx.size
    assert np.intersect1d(log.req_slate[tr], log.req_slate[va]).size == 0
    n_pages = np.unique(log.req_slate).size
    assert np.unique(log.req_slate[va]).size == round(0.25 * n_pages)
    _tr2, va2 = validation_split(log, idx, 0.25, np.random.default_rng(0))
    assert np.array_equal(va, va2)


def test_make_splits_pools_cloud_and_device_and_keeps_test_apart(tiny) -> None:
    cfg, log = tiny
    tr, va, te = make_splits(log, cfg.split, cfg.train, seed=0)
    split = assign_splits(log, cfg.split)
    assert np.array_equal(te, np.flatnonzero(split == TEST))
    pooled = np.sort(np.concatenate([tr, va]))
    assert np.array_equal(pooled, np.flatnonzero(split != TEST))
    capped = TrainConfig(max_requests=50, batch=32)
    tr, va, _ = make_splits(log, cfg.split, capped, seed=0)
    assert tr.size + va.size == 50


def test_fit_keeps_best_epoch_and_stops_on_patience(tiny) -> None:
    cfg, log = tiny
    tr, va, _ = make_splits(log, cfg.split, cfg.train, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, log.schema, log.n_items)
    tcfg = TrainConfig(lr=0.05, epochs=6, patience=1, batch=32, eval_batch=64)
    res = fit(model, log, tr, va, tcfg, SeqLens(8, 4), np.random.default_rng(0))
    vals = [h["val_gauc"] for h in res.history]
    assert res.best_epoch == int(np.argmax(vals)) and res.best_val_gauc == max(vals)
    if res.stopped_early:  # patience 1: stopped right after the first non-improving epoch
        assert len(vals) == res.best_epoch + 2
    zero = np.zeros(log.n_users, np.int8)
    now = evaluate(model, log, va, zero, 64, SeqLens(8, 4)).finalize()["gauc"]["all"]
    assert now == pytest.approx(res.best_val_gauc, abs=1e-12)  # best weights restored


def test_fit_rejects_diverging_loss(tiny) -> None:
    cfg, log = tiny
    tr, va, _ = make_splits(log, cfg.split, cfg.train, seed=0)
    model = build_model(cfg.model, log.schema, log.n_items)
    with torch.no_grad():
        model.device.head[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="loss became nan"):
        fit(model, log, tr, va, TrainConfig(batch=32), SeqLens(8, 4), np.random.default_rng(0))


def test_train_is_deterministic_and_writes_run_dir(tiny, tmp_path) -> None:
    cfg, log = tiny
    cfg = load_config(overrides=[*TINY, "train.epochs=2", f"out_dir={tmp_path}"])
    a = train(cfg, log)
    b = train(cfg, log, write=False)
    assert a.test == b.test  # same seed, same numbers
    assert set(a.test) >= {"gauc", "uauc", "ndcg@10", "logloss"}
    assert set(a.test["gauc"]) == {"all", "tail", "torso", "head"}
    files = {p.name for p in a.run_dir.iterdir()}
    assert files == {"config.yaml", "metrics.json", "model.pt"}
    saved = json.loads((a.run_dir / "metrics.json").read_text())
    assert saved["test"]["gauc"]["all"] == pytest.approx(a.test["gauc"]["all"])
    assert saved["device_bytes"] == a.model.device.size_bytes()
    c = train(load_config(overrides=[*TINY, "train.epochs=2", "seed=1"]), log, write=False)
    assert c.test["logloss"]["all"] != a.test["logloss"]["all"]


def test_checkpoint_round_trip_and_errors(tiny, tmp_path) -> None:
    cfg, log = tiny
    torch.manual_seed(0)
    model = build_model(cfg.model, log.schema, log.n_items)
    path = save_reranker(model, cfg.model, log.schema, log.n_items, tmp_path / "m.pt")
    loaded, meta = load_reranker(path, log.schema)
    assert meta["name"] == cfg.model.name and meta["n_items"] == log.n_items
    idx = np.arange(20)
    p0 = predict(model, log, idx, 64, SeqLens(8, 4))
    p1 = predict(loaded, log, idx, 64, SeqLens(8, 4))
    assert np.array_equal(p0.score, p1.score)
    with pytest.raises(ValueError, match="no model checkpoint"):
        load_reranker(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable model checkpoint"):
        load_reranker(tmp_path / "junk.pt")
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "version": 99}, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_reranker(tmp_path / "v.pt")
    other = load_dataset(load_config(overrides=["dataset=kuairand"]))
    with pytest.raises(ValueError, match="another dataset schema"):
        load_reranker(path, other.schema)


def test_cli_train_with_model_shorthand(tmp_path, capsys) -> None:
    argv = ["train", "model=dnn-rank", *TINY, "train.epochs=1", f"out_dir={tmp_path}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test gauc" in out and "train dnn-rank on sim" in out
    (run,) = tmp_path.iterdir()
    assert run.name.endswith("train-dnn-rank")
    assert main(["train", "model=nope", *TINY]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def _fake(dataset: str, model: str, seed: int, g: float) -> dict:
    return {"dataset": dataset, "model": model, "seed": seed, "test": {"gauc": {"all": g}}}


def test_table2_summary_and_ordering_by_hand() -> None:
    means = dict(zip(t2.MODELS, [0.60, 0.61, 0.62, 0.63, 0.615, 0.64]))
    res = [_fake("sim", m, s, g + d) for m, g in means.items() for s, d in ((0, -0.01), (1, 0.01))]
    s = t2.summarize(res)
    cell = s["table"]["sim"]["dlcm"]
    assert cell["mean"] == pytest.approx(0.61) and cell["n"] == 2
    assert cell["std"] == pytest.approx(np.std([0.60, 0.62], ddof=1))
    o = s["ordering"]["sim"]
    assert o["dnn_rank_below_dlcm"] is True and o["full_best"] is True
    assert all(o["crban_above_dlcm"].values())
    assert o["full_vs_dlcm_relative"] == pytest.approx(0.64 / 0.61 - 1)
    assert o["full_at_least_2pct_above_dlcm"] is True
    res = [r for r in res if r["model"] != "crban-huism"]
    res += [_fake("sim", "crban-huism", 0, 0.605)]
    o = t2.summarize(res)["ordering"]["sim"]
    assert o["crban_above_dlcm"]["crban-huism"] is False
    md = t2.markdown(t2.summarize(res))
    assert "| 6 | CRBAN+HUBSM(IE&IPV) | 0.6483 | 0.6400 ± 0.0141 |" in md


def test_table2_run_is_resumable(tiny, tmp_path) -> None:
    cfg = load_config(overrides=[*TINY, "train.epochs=1"])
    got = []
    res = t2.run(cfg, tmp_path, ["sim"], 1, ["dnn-rank", "dlcm"], on_result=got.append)
    assert len(res) == len(got) == 2
    assert {r["model"] for r in res} == {"dnn-rank", "dlcm"}
    again = []
    res2 = t2.run(cfg, tmp_path, ["sim"], 1, ["dnn-rank", "dlcm"], on_result=again.append)
    assert again == [] and len(res2) == 2  # nothing retrained
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (tmp_path / "results.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match=r"results\.jsonl:1"):
        t2.run(cfg, tmp_path, ["sim"], 1, ["dnn-rank"])


def test_softmax_ce_by_hand() -> None:
    from shoal.client.training import softmax_ce

    z = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor(
        [[True, True, True, False], [True, True, False, False], [True] * 2 + [False] * 2]
    )
    # row 0: slot 3 is padding; log-softmax over (1, 0, 2); positives slots 0 and 2
    lse = np.log(np.exp(1) + np.exp(0) + np.exp(2))
    row0 = -((1 - lse) + (2 - lse)) / 2
    # row 1: only positives among its labelled slots -> skipped; row 2: positive slot 1
    row2 = -(1 - np.log(np.exp(3) + np.exp(1)))
    assert softmax_ce(z, y, mask).item() == pytest.approx((row0 + row2) / 2, rel=1e-6)
    none = softmax_ce(z, torch.zeros_like(y), mask)
    assert none.item() == 0.0


def test_per_page_sample_draws_k_requests_of_every_page(tiny) -> None:
    from shoal.client.training import per_page_sample

    _, log = tiny
    idx = np.arange(log.n_requests)
    one = per_page_sample(log, idx, 1, np.random.default_rng(0))
    pages = log.req_slate[idx]
    assert np.array_equal(np.sort(log.req_slate[one]), np.unique(pages))  # one per page
    two = per_page_sample(log, idx, 2, np.random.default_rng(0))
    counts = np.bincount(log.req_slate[two])
    assert counts.max() <= 2
    assert np.array_equal(counts > 0, np.bincount(pages, minlength=counts.size) > 0)
    other = per_page_sample(log, idx, 1, np.random.default_rng(1))
    assert not np.array_equal(one, other)  # a fresh draw each epoch
    assert np.array_equal(per_page_sample(log, idx, 0, np.random.default_rng(0)), idx)
