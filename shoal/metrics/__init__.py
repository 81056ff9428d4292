"""Ranking metrics shared by every part of Shoal (centralized training and federated evaluation).

GAUC is the AUC inside each group (a rerank request, or a user), averaged with impression
weights (the group's number of labelled candidates); groups whose labels are all one class are
skipped. AUC counts ties as half (the Mann-Whitney statistic), matching scikit-learn.

The full set of metrics (GAUC over requests, user-average AUC, NDCG@k, logloss, impressions,
clicks, CTR; overall and per user-activity bucket) is computed in two steps so that it can be
aggregated exactly across devices:

1. :func:`ranking_sums` turns the labelled candidates of one or more *complete* users into
   additive sufficient statistics (:class:`MetricSums`);
2. the statistics of all parts are summed (``+`` or :meth:`MetricSums.total`) and
   :meth:`MetricSums.finalize` divides them into metrics.

The result equals the metrics of the pooled data (not an average of per-device averages), as
long as no user's samples are split across parts. See ``docs/metrics.md``.
"""

from shoal.metrics.ranking import gauc, group_auc
from shoal.metrics.sums import (
    BUCKET_NAMES,
    DEFAULT_KS,
    LOGLOSS_EPS,
    MetricSums,
    ranking_metrics,
    ranking_sums,
)

__all__ = [
    "BUCKET_NAMES",
    "DEFAULT_KS",
    "LOGLOSS_EPS",
    "MetricSums",
    "gauc",
    "group_auc",
    "ranking_metrics",
    "ranking_sums",
]
