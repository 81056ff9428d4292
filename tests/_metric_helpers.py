"""Random request data and comparisons shared by ``test_metrics.py`` and ``test_metric_sums.py``
(plain functions, no pytest magic)."""

from __future__ import annotations

import numpy as np

KS = (1, 3, 5, 10)


def _random_requests(seed: int, n_users: int = 60) -> dict[str, np.ndarray]:
    """Random labelled candidates of complete users, shuffled, with many score ties.

    Users get sparse ids and a bucket in 0..2; each has 1-5 requests of 1-15 candidates with a
    user-specific click rate (some requests and users end up single-class) and a user-specific
    score quality (score = noise + quality * label, rounded). Request ids are global and sparse.
    ``probs`` lies in [0.01, 0.99] so scikit-learn's clipping never acts.
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(10_000, size=n_users, replace=False)
    cols: dict[str, list] = {k: [] for k in ("scores", "labels", "request", "user", "bucket")}
    next_request = 0
    for u in users:
        b, ctr, quality = rng.integers(0, 3), rng.uniform(0.02, 0.5), rng.uniform(-0.5, 2.0)
        for _ in range(rng.integers(1, 6)):
            size = int(rng.integers(1, 16))
            labels = (rng.random(size) < ctr).astype(np.int64)
            cols["scores"].append(np.round(rng.normal(size=size) + quality * labels, 1))  # ties
            cols["labels"].append(labels)
            cols["request"].append(np.full(size, 7 * next_request + 3))
            cols["user"].append(np.full(size, u))
            cols["bucket"].append(np.full(size, b))
            next_request += 1
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["probs"] = rng.uniform(0.01, 0.99, size=data["scores"].size)
    perm = rng.permutation(data["scores"].size)
    return {k: v[perm] for k, v in data.items()}


def _args(d: dict[str, np.ndarray], m: np.ndarray | slice = slice(None)) -> tuple:
    return d["scores"][m], d["labels"][m], d["request"][m], d["user"][m], d["bucket"][m]


def _assert_same_metrics(a: dict, b: dict, atol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for metric in a:
        assert a[metric].keys() == b[metric].keys()
        np.testing.assert_allclose(
            list(a[metric].values()), list(b[metric].values()), rtol=0, atol=atol, err_msg=metric
        )
