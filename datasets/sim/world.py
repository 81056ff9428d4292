"""The simulated world: a catalog, a user population and the stale cloud recommender.

Everything here is drawn once from a seeded generator and then fixed; sessions
(:mod:`shoal.datasets.sim.engine`) are played against it. Click utility of user ``u`` for item
``i`` at a moment of a session (all terms documented in ``docs/simulator.md``)::

    r = lt * <w_u, v_i> + q_i                      long-term interest, item quality
        + price_u * z(price_i) + brand_u[brand_i]  personal idiosyncrasies (either sign)
        - age_gap + gender_mismatch                 profile fit
        + intent_weight * <s, v_i>                  in-session intent s (drifts, device-only)
        - fatigue * (#same-category exposures this session)
    p(click | examined) = sigmoid(bias + r),  p(examined at page slot j) = (1 + j) ** -position_bias

The cloud ranks candidates with a stale, noisy estimate of the long-term part only: it sees
neither the session's intent nor the users' personal sensitivities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.config import SimConfig

LONG_TERM_SCALE = 2.5  # weight of <w_u, v_i>
N_GENDERS = 3  # item: 0 unisex, 1 female, 2 male
N_BC_TYPES = 2  # Taobao business type: C2C / B2C
LIKED_BRANDS = 8  # brands each user specially likes (per-user, not learnable globally)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


@dataclass
class World:
    """Fixed parameters of a simulated population (items are 1-based; row 0 is padding)."""

    cfg: SimConfig
    item_cat: np.ndarray  # (I+1,) int32 category id 1..C
    item_brand: np.ndarray  # (I+1,) int32 1..B
    item_gender: np.ndarray  # (I+1,) int32 1..3 (1 unisex)
    item_price: np.ndarray  # (I+1,) int32 1..P
    item_age: np.ndarray  # (I+1,) int32 1..A
    item_bc: np.ndarray  # (I+1,) int32 1..2
    item_vec: np.ndarray  # (I+1, d) float32 unit latent vectors
    item_quality: np.ndarray  # (I+1,) float32
    cat_vec: np.ndarray  # (C+1, d) float32 category centroids
    cat_items: np.ndarray  # (I,) item ids sorted by category
    cat_offsets: (
        np.ndarray
    )  # (C+2,) items of category c: cat_items[cat_offsets[c]:cat_offsets[c+1]]
    user_interest: np.ndarray  # (U, C+1) float32 long-term category interest (Dirichlet), col 0 = 0
    user_vec: np.ndarray  # (U, d) float32 long-term latent interest
    user_price: np.ndarray  # (U,) float32 price sensitivity (either sign)
    user_brand: np.ndarray  # (U, LIKED_BRANDS) int32 specially liked brands
    user_brand_bonus: np.ndarray  # (U,) float32
    user_gender: np.ndarray  # (U,) int32 2 or 3 (female / male in item coding)
    user_age: np.ndarray  # (U,) int32 1..A
    user_sessions: np.ndarray  # (U,) int32 number of sessions in the logged period
    cloud_vec: np.ndarray  # (U, d) float32 the cloud's stale, noisy estimate of user_vec
    cloud_interest: np.ndarray  # (U, C+1) float32 the cloud's retrieval distribution
    bias: float = 0.0  # click logit bias, calibrated to cfg.target_ctr

    @property
    def n_users(self) -> int:
        return int(self.user_vec.shape[0])

    def item_features(self) -> np.ndarray:
        """(I+1, 6) int32 catalog in Schema order: category, brand, gender, price, age, bc."""
        cols = (self.item_cat, self.item_brand, self.item_gender)
        cols += (self.item_price, self.item_age, self.item_bc)
        out = np.stack(cols, axis=1).astype(np.int32)
        out[0] = 0
        return out

    def static_utility(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Session-independent part of the utility ``r`` (no intent, no fatigue, no bias).

        Parameters
        ----------
        users : np.ndarray
            (L,) user indices.
        items : np.ndarray
            (L, K) item ids.

        Returns
        -------
        np.ndarray
            (L, K) float32.
        """
        scale = self.cfg.idiosyncrasy
        u = users[:, None]
        lt = LONG_TERM_SCALE * np.einsum("ld,lkd->lk", self.user_vec[users], self.item_vec[items])
        p = self.cfg.price_levels
        z_price = (self.item_price[items] - (p + 1) / 2) / max(p / 3.5, 1e-9)
        liked = (self.item_brand[items][:, :, None] == self.user_brand[u]).any(axis=-1)
        age_gap = np.abs(self.item_age[items] - self.user_age[u]) / max(self.cfg.age_levels, 1)
        g = self.item_gender[items]
        mismatch = (g != 1) & (g != self.user_gender[u])
        r = lt + self.item_quality[items]
        r += scale * (self.user_price[u] * z_price + self.user_brand_bonus[u] * liked)
        r -= scale * (1.2 * age_gap + 1.0 * mismatch)
        return r.astype(np.float32)

    def examination(self, slot: np.ndarray) -> np.ndarray:
        """Probability that the item at 0-based page slot ``slot`` is examined."""
        return (1.0 + slot) ** (-self.cfg.position_bias)


def make_world(cfg: SimConfig, rng: np.random.Generator) -> World:
    """Draw catalog, users and the cloud's view of them (bias left at 0; see ``calibrate``)."""
    C, B, d, U, I = cfg.categories, cfg.brands, cfg.latent_dim, cfg.users, cfg.items
    cat_vec = np.zeros((C + 1, d), np.float32)
    cat_vec[1:] = _unit(rng.standard_normal((C, d)))
    # Catalog: category sizes are skewed (a few big categories), brands nest in categories.
    cat_pop = rng.dirichlet(np.full(C, 2.0))
    item_cat = np.r_[0, rng.choice(C, size=I, p=cat_pop) + 1].astype(np.int32)
    brand_cat = rng.integers(1, C + 1, size=B + 1)
    brand_price = rng.uniform(1, cfg.price_levels, size=B + 1)
    item_brand = np.zeros(I + 1, np.int32)
    for c in range(1, C + 1):  # brands of item's category (or any brand if none)
        members = np.flatnonzero(item_cat == c)
        pool = np.flatnonzero(brand_cat[1:] == c) + 1
        pool = pool if pool.size else np.arange(1, B + 1)
        item_brand[members] = rng.choice(pool, size=members.size)
    noise = rng.normal(0, 1.2, size=I + 1)
    item_price = np.clip(np.rint(brand_price[item_brand] + noise), 1, cfg.price_levels)
    item_gender = rng.choice(N_GENDERS, size=I + 1, p=[0.5, 0.3, 0.2]) + 1
    item_age = rng.integers(1, cfg.age_levels + 1, size=I + 1)
    item_bc = rng.integers(1, N_BC_TYPES + 1, size=I + 1)
    item_vec = _unit(cat_vec[item_cat] + 0.6 * rng.standard_normal((I + 1, d)) / np.sqrt(d))
    item_vec[0] = 0
    item_quality = rng.normal(0, 0.4, size=I + 1).astype(np.float32)
    cat_items = np.argsort(item_cat[1:], kind="stable") + 1
    cat_offsets = np.searchsorted(item_cat[cat_items], np.arange(C + 2)).astype(np.int64)

    # Users: non-IID long-term interests, idiosyncrasies, long-tailed activity.
    interest = np.zeros((U, C + 1), np.float32)
    interest[:, 1:] = rng.dirichlet(np.full(C, cfg.interest_alpha), size=U)
    user_vec = (interest @ cat_vec).astype(np.float32)
    user_price = rng.normal(0, 0.8, size=U).astype(np.float32)
    top_cats = np.argmax(interest[:, 1:] + rng.gumbel(size=(U, C)) * 0.05, axis=1) + 1
    user_brand = np.where(
        rng.random((U, LIKED_BRANDS)) < 0.6,
        item_brand[cat_items[_sample_in_cat(cat_offsets, top_cats, LIKED_BRANDS, rng)]],
        rng.integers(1, B + 1, size=(U, LIKED_BRANDS)),
    ).astype(np.int32)
    user_brand_bonus = rng.gamma(2.0, 0.6, size=U).astype(np.float32)
    user_gender = rng.integers(2, 4, size=U).astype(np.int32)
    user_age = rng.integers(1, cfg.age_levels + 1, size=U).astype(np.int32)
    mu = np.log(cfg.sessions_mean) - cfg.sessions_sigma**2 / 2
    sessions = np.rint(rng.lognormal(mu, cfg.sessions_sigma, size=U))
    user_sessions = np.clip(sessions, 1, cfg.sessions_max).astype(np.int32)

    # The cloud: a stale, noisy estimate of long-term interest only.
    cloud_vec = (user_vec + rng.normal(0, 0.15, size=user_vec.shape)).astype(np.float32)
    cloud_interest = 0.7 * interest + 0.3 / C
    cloud_interest[:, 0] = 0
    cloud_interest /= cloud_interest.sum(axis=1, keepdims=True)
    return World(
        cfg=cfg,
        item_cat=item_cat,
        item_brand=item_brand,
        item_gender=item_gender.astype(np.int32),
        item_price=item_price.astype(np.int32),
        item_age=item_age.astype(np.int32),
        item_bc=item_bc.astype(np.int32),
        item_vec=item_vec.astype(np.float32),
        item_quality=item_quality,
        cat_vec=cat_vec,
        cat_items=cat_items,
        cat_offsets=cat_offsets,
        user_interest=interest,
        user_vec=user_vec,
        user_price=user_price,
        user_brand=user_brand,
        user_brand_bonus=user_brand_bonus,
        user_gender=user_gender,
        user_age=user_age,
        user_sessions=user_sessions,
        cloud_vec=cloud_vec,
        cloud_interest=cloud_interest.astype(np.float32),
    )


def _sample_in_cat(
    cat_offsets: np.ndarray, cats: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """(L, k) positions into ``cat_items`` of random items of category ``cats`` (L,)."""
    lo, hi = cat_offsets[cats], cat_offsets[cats + 1]
    size = np.maximum(hi - lo, 1)
    return lo[:, None] + (rng.random((cats.shape[0], k)) * size[:, None]).astype(np.int64)


def rowwise_searchsorted(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per-row inverse-CDF draws.

    Parameters
    ----------
    cdf : np.ndarray
        (L, M) non-decreasing rows (unnormalised cumulative weights).
    u : np.ndarray
        (L, N) uniforms in [0, 1).

    Returns
    -------
    np.ndarray
        (L, N) int64 column index ``j`` with ``cdf[l, j-1] <= u * cdf[l, -1] < cdf[l, j]``.
    """
    L, M = cdf.shape
    norm = cdf / np.maximum(cdf[:, -1:], 1e-30)
    off = np.arange(L, dtype=np.float64)[:, None] * 2.0  # rows live in disjoint intervals
    flat = (norm + off).ravel()
    idx = np.searchsorted(flat, (u + off).ravel(), side="right").reshape(u.shape)
    return np.minimum(idx - np.arange(L)[:, None] * M, M - 1)


def sample_categories(prob: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One category per row of ``prob`` (L, C+1; column 0 has weight 0) given uniforms (L,)."""
    return rowwise_searchsorted(np.cumsum(prob, axis=1), u[:, None])[:, 0]


def cloud_page(
    world: World, users: np.ndarray, clicked_vec: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The cloud's answer to a paging request: ``cfg.candidates`` items in cloud order.

    Parameters
    ----------
    users : np.ndarray
        (L,) user indices.
    clicked_vec : np.ndarray
        (L, d) mean vector of items clicked on earlier pages of the session (zeros if none):
        the only in-session signal the cloud receives, at paging time.
    rng : np.random.Generator

    Returns
    -------
    items : np.ndarray
        (L, N) int32 candidates, best first.
    scores : np.ndarray
        (L, N, 2) float32 cloud features: the cloud's logit and its item-quality estimate.
    """
    cfg = world.cfg
    L, N = users.shape[0], cfg.candidates
    # Retrieval: 80% from categories the cloud believes the user likes, 20% from anywhere.
    cdf = np.cumsum(world.cloud_interest[users], axis=1)  # (L, C+1)
    cats = rowwise_searchsorted(cdf, rng.random((L, N)))
    lo, hi = world.cat_offsets[cats], world.cat_offsets[cats + 1]
    pick = lo + (rng.random((L, N)) * np.maximum(hi - lo, 1)).astype(np.int64)
    items = world.cat_items[np.minimum(pick, world.cat_items.shape[0] - 1)]
    anywhere = rng.random((L, N)) < 0.2
    items = np.where(anywhere, rng.integers(1, cfg.items + 1, size=(L, N)), items)
    q_hat = world.item_quality[items] + rng.normal(0, 0.3, size=(L, N))
    user_est = world.cloud_vec[users] + 0.5 * clicked_vec
    logit = LONG_TERM_SCALE * np.einsum("ld,lnd->ln", user_est, world.item_vec[items]) + q_hat
    logit += rng.normal(0, 0.3, size=(L, N))
    order = np.argsort(-logit, axis=1, kind="stable")
    items = np.take_along_axis(items, order, axis=1).astype(np.int32)
    scores = np.stack(
        [np.take_along_axis(logit, order, axis=1), np.take_along_axis(q_hat, order, axis=1)],
        axis=-1,
    ).astype(np.float32)
    return items, scores
