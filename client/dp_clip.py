"""Device-side clipping of a model update (user-level DP-FedAvg with ``dp.clipping=device``).

:func:`clip` is the one clipping function of Shoal (the server's clipping uses it too).
:class:`ClippingMod` is a Flower client mod: when a training message's config carries
``clipping-norm`` C, it replaces the reply's weights w by ``global + clip(w − global, C)``
and reports ``dp_unclipped`` (1 when ‖w − global‖ ≤ C), the bit adaptive clipping counts.
Without that key it changes nothing, so the default ClientApp always carries it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, Context, Message, MessageType

CLIPPING_NORM = "clipping-norm"
UNCLIPPED = "dp_unclipped"


def clip(delta: np.ndarray, c: float) -> tuple[np.ndarray, float, bool]:
    """``delta`` scaled to L2 norm at most ``c``.

    Returns
    -------
    clipped : np.ndarray
        ``delta · min(1, c / ‖delta‖)``; an all-zero delta stays zero (no division by 0).
    norm : float
        ‖delta‖ before clipping.
    unclipped : bool
        Whether ``‖delta‖ ≤ c``.
    """
    if not c > 0:
        raise ValueError(f"clipping norm must be > 0, got {c}")
    norm = float(np.linalg.norm(delta))
    if norm <= c:
        return delta, norm, True
    return delta * (c / norm), norm, False


def float_keys(arrays) -> list[str]:
    """Names of the floating-point arrays (what a model update changes)."""
    return [k for k, a in arrays.items() if np.dtype(a.dtype).kind == "f"]


class ClippingMod:
    """Clip the update of a training reply on the device (see the module docstring)."""

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        config = msg.content.config_records.get("config", {})
        if msg.metadata.message_type != MessageType.TRAIN or CLIPPING_NORM not in config:
            return reply
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        c = float(config[CLIPPING_NORM])
        sent, new = msg.content.array_records["arrays"], reply.content.array_records["arrays"]
        keys = float_keys(sent)
        g = [sent[k].numpy().astype(np.float64) for k in keys]
        delta = np.concatenate([(new[k].numpy() - gi).ravel() for k, gi in zip(keys, g)])
        clipped, _, unclipped = clip(delta, c)
        at = 0
        for k, gi in zip(keys, g):
            n = gi.size
            new[k] = Array((gi + clipped[at : at + n].reshape(gi.shape)).astype(sent[k].dtype))
            at += n
        reply.content.metric_records["metrics"][UNCLIPPED] = int(unclipped)
        return reply
