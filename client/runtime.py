"""On-device incremental behaviour state of an EdgeRec device network.

The device does not re-encode its behaviour sequences at every rerank request. It keeps, per
sequence (IE and IPV), the GRU states of the HUBSM encoder and a ring of the encodings of the
last ``m`` (resp. ``n``) behaviours; a new behaviour costs one GRU step per layer
(:meth:`HUBSMEncoder.step`, ``ie_step.onnx`` / ``ipv_step.onnx``), and a request runs only
:meth:`EdgeRecNet.rerank` (``rerank.onnx``) on the stored encodings plus the time-since
buckets computed at request time (the time-since column is not fed to the GRUs, which is what
makes this possible). A HUISM branch has no recurrent state: each slot is encoded on its own.

Semantics, precisely
--------------------
Let ``N`` be the number of behaviours pushed since the state was created (or :meth:`reset`)
and ``cap`` the sequence cap (``m`` or ``n``, the ``ie_len``/``ipv_len`` the model was trained
with).

* ``N <= cap``: the stored encodings equal, slot for slot, the full-sequence encoding
  ``branch.encode`` of those ``N`` behaviours (a GRU from the zero state), up to float
  rounding; reranking from the state equals the full forward (tests check both to 1e-5).
* ``N > cap``: the ring keeps the encodings of the last ``cap`` behaviours, but they were
  computed by a GRU that has run since behaviour 1 (the running state carries older memory),
  whereas training re-encodes the last ``cap`` behaviours from a zero state. This is a
  **train/serve difference**: the device sees a longer memory than the model was trained on.
  ``docs/deployment.md`` reports its measured size. To serve exactly the training semantics
  after the cap a device would re-run ``cap`` steps per behaviour; replaying the kept raw
  behaviours after :meth:`reset` (e.g. when a new model version arrives, which invalidates
  every stored encoding anyway) restores exactness until the next overflow.

Every state has :meth:`state_dict` / :meth:`load_state_dict` (validated shapes) so the device
can persist it between app sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from shoal.client.export import run_onnx
from shoal.client.models.edgerec import EdgeRecNet
from shoal.client.models.parts import BehaviourBranch, HUBSMEncoder
from shoal.datasets.schema import ActionSpec

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(emb (1, D), act (1, A), state (2, L, 1, H)) → (enc (1, 2H), new state)``."""

SEQUENCES = ("ie", "ipv")


def onnx_step(session: ort.InferenceSession) -> StepFn:
    """A :data:`StepFn` that runs an exported step graph (``ie_step.onnx``) in ONNX Runtime."""

    def step(emb: torch.Tensor, act: torch.Tensor, state: torch.Tensor):
        out = run_onnx(session, {"emb": emb, "act": act, "state": state})
        return torch.from_numpy(out["enc"]), torch.from_numpy(out["new_state"])

    return step


class SequenceState:
    """Incremental encoding of one behaviour sequence (IE or IPV) of one user.

    Parameters
    ----------
    branch : BehaviourBranch
        ``net.ie`` or ``net.ipv`` of an :class:`EdgeRecNet`.
    cap : int
        Slots kept (``m`` or ``n``, as in training).
    n_actions : int
        ``A``: stored action columns of one behaviour (the time-since column excluded).
    step : StepFn, optional
        How a HUBSM branch advances (default ``branch.encoder.step`` in PyTorch; see
        :func:`onnx_step`). Ignored for HUISM.

    Attributes
    ----------
    count : int
        Behaviours pushed since creation or :meth:`reset`; the stored encodings equal the
        training-time encoding while ``count <= cap`` (see the module notes).
    """

    def __init__(
        self, branch: BehaviourBranch, cap: int, n_actions: int, step: StepFn | None = None
    ):
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.branch = branch
        self.cap = int(cap)
        self.n_actions = int(n_actions)
        self.recurrent = isinstance(branch.encoder, HUBSMEncoder)
        self.emb_dim = (
            branch.encoder.item_gru.input_size
            if self.recurrent
            else branch.encoder.proj.in_features
        )
        self.enc_dim = branch.encoder.out_dim
        self._step = step if step is not None else getattr(branch.encoder, "step", None)
        self.reset()

    def reset(self) -> None:
        """Forget every behaviour (zero GRU state, empty ring)."""
        self._enc = torch.zeros(self.cap, self.enc_dim)  # (cap, E) ring
        self._time = torch.zeros(self.cap, dtype=torch.float64)  # (cap,) ring
        self._head = 0  # ring slot of the next behaviour
        self.count = 0  # behaviours pushed since creation / reset
        self._gru = self.branch.encoder.initial_state(1) if self.recurrent else None

    def push(self, emb: torch.Tensor, act: torch.Tensor, time: float) -> torch.Tensor:
        """Encode one new behaviour and store it in the ring.

        Parameters
        ----------
        emb : torch.Tensor
            (D,) float: the item's shipped embedding.
        act : torch.Tensor
            (A,) int64: bucketized stored actions, without the time-since column.
        time : float
            Event time in seconds (not before the previous behaviour's).

        Returns
        -------
        torch.Tensor
            (E,) the behaviour's slot encoding.
        """
        emb, act = torch.as_tensor(emb), torch.as_tensor(act)
        if tuple(emb.shape) != (self.emb_dim,) or not emb.is_floating_point():
            raise ValueError(
                f"emb must be a float tensor of shape ({self.emb_dim},), got {emb.dtype} "
                f"{tuple(emb.shape)}"
            )
        if tuple(act.shape) != (self.n_actions,) or act.is_floating_point():
            raise ValueError(
                f"act must be an integer tensor of shape ({self.n_actions},) (stored actions, "
                f"no time-since column), got {act.dtype} {tuple(act.shape)}"
            )
        if self.count and time < self.last_time:
            raise ValueError(f"behaviours must arrive in time order: {time} < {self.last_time}")
        emb, act = emb.float()[None], act.long()[None]  # (1, D), (1, A)
        with torch.no_grad():
            if self.recurrent:
                enc, self._gru = self._step(emb, act, self._gru)  # (1, E), (2, L, 1, H)
                enc = enc[0]
            else:
                enc = self.branch.encoder(emb[:, None], act[:, None])[0, 0]  # (E,)
        self._enc[self._head] = enc
        self._time[self._head] = float(time)
        self._head = (self._head + 1) % self.cap
        self.count += 1
        return enc

    @property
    def last_time(self) -> float:
        """Time of the newest behaviour (``-inf`` when empty)."""
        return float(self._time[(self._head - 1) % self.cap]) if self.count else float("-inf")

    def _order(self) -> torch.Tensor:
        """Ring slots oldest first (cap,)."""
        start = self._head if self.count >= self.cap else 0
        return (start + torch.arange(self.cap)) % self.cap

    def encodings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stored slots, left-aligned oldest first as in a gathered batch.

        Returns
        -------
        enc : torch.Tensor
            (cap, E) float, zero on padding.
        time : torch.Tensor
            (cap,) float64 event times, zero on padding.
        mask : torch.Tensor
            (cap,) bool, True on the ``min(count, cap)`` real slots.
        """
        order = self._order()
        mask = torch.arange(self.cap) < min(self.count, self.cap)
        return self._enc[order].clone(), self._time[order].clone(), mask

    def since(self, now: float, decay: ActionSpec) -> torch.Tensor:
        """(cap,) int64 time-since buckets at request time ``now`` (0 on padding), as
        :meth:`RequestLog.batch` computes them (``decay = schema.decay_action``)."""
        _, time, mask = self.encodings()
        ids = decay.bucketize((float(now) - time.numpy()).astype(np.float64))
        return torch.from_numpy(ids.astype(np.int64)) * mask

    def state_dict(self) -> dict[str, Any]:
        """``count``, ``enc`` (cap, E), ``time`` (cap,) oldest first, and ``gru`` (HUBSM)."""
        enc, time, _ = self.encodings()
        out: dict[str, Any] = {"count": self.count, "enc": enc, "time": time}
        if self._gru is not None:
            out["gru"] = self._gru.clone()
        return out

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raise ValueError unless ``state`` is a :meth:`state_dict` this state can load."""
        want = {"count", "enc", "time"} | ({"gru"} if self.recurrent else set())
        if not isinstance(state, Mapping) or set(state) != want:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"sequence state must have keys {sorted(want)}, got {got}")
        count = state["count"]
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"sequence state 'count' must be an int >= 0, got {count!r}")
        shapes = {"enc": (self.cap, self.enc_dim), "time": (self.cap,)}
        if self.recurrent:
            shapes["gru"] = tuple(self.branch.encoder.initial_state(1).shape)
        for k, shape in shapes.items():
            v = state[k]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"sequence state {k!r} must be a tensor of shape {shape} (cap, encoder "
                    f"size of this model), got {got}"
                )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a state with the same cap and encoder shape."""
        self.check_state_dict(state)
        self._enc = state["enc"].detach().float().clone()
        self._time = state["time"].detach().double().clone()
        self._gru = state["gru"].detach().float().clone() if self.recurrent else None
        self.count = int(state["count"])
        self._head = min(self.count, self.cap) % self.cap


class BehaviourState:
    """Both behaviour sequences of one user, for an :class:`EdgeRecNet`.

    Parameters
    ----------
    net : EdgeRecNet
        The device network (its encoders advance the state; :meth:`rerank` uses it).
    ie_len, ipv_len : int
        Caps ``m`` and ``n`` (those the model was trained with).
    steps : mapping of str to StepFn, optional
        Per sequence (``"ie"``, ``"ipv"``), a replacement of the PyTorch step, e.g.
        ``{"ie": onnx_step(onnx_session("ie_step.onnx"))}``.

    Examples
    --------
    The device pushes each behaviour as it happens, then scores a request::

        state = BehaviourState(net, ie_len=50, ipv_len=20)
        state.push("ie", emb, act, time)                  # one GRU step per layer
        feed = state.rerank_inputs(now, schema.decay_action)
        logits = run_onnx(rerank_session, {**candidates, **feed})["logits"]
    """

    def __init__(
        self,
        net: EdgeRecNet,
        ie_len: int = 50,
        ipv_len: int = 20,
        steps: Mapping[str, StepFn] | None = None,
    ):
        if not isinstance(net, EdgeRecNet):
            raise TypeError(f"incremental state exists for EdgeRecNet only, got {type(net)}")
        steps = dict(steps or {})
        unknown = set(steps) - set(SEQUENCES)
        if unknown:
            raise ValueError(f"steps keys must be among {SEQUENCES}, got {sorted(unknown)}")
        self.net = net
        cfg = net.cfg
        caps = {"ie": ie_len, "ipv": ipv_len}
        n_act = {"ie": len(cfg.ie_action_vocab) - 1, "ipv": len(cfg.ipv_action_vocab) - 1}
        self.sequences: dict[str, SequenceState] = {}
        self.caps = caps
        for k in SEQUENCES:
            branch = getattr(net, k)
            if branch is not None:
                self.sequences[k] = SequenceState(branch, caps[k], n_act[k], steps.get(k))

    def _check_kind(self, kind: str) -> None:
        if kind not in SEQUENCES:
            raise ValueError(f"sequence must be one of {SEQUENCES}, got {kind!r}")

    def push(
        self, kind: str, emb: torch.Tensor, act: torch.Tensor, time: float
    ) -> torch.Tensor | None:
        """Add one behaviour to sequence ``kind`` (``"ie"``/``"ipv"``); see
        :meth:`SequenceState.push`. Returns its (E,) encoding, or None when the model has no
        such branch (the behaviour is then not needed)."""
        self._check_kind(kind)
        seq = self.sequences.get(kind)
        return seq.push(emb, act, time) if seq is not None else None

    def reset(self) -> None:
        """Forget every behaviour of both sequences."""
        for seq in self.sequences.values():
            seq.reset()

    def rerank_inputs(self, now: float, decay: ActionSpec) -> dict[str, torch.Tensor]:
        """The behaviour inputs of ``rerank.onnx`` / :meth:`EdgeRecNet.rerank` at time ``now``.

        Returns
        -------
        dict of str to torch.Tensor
            ``ie_enc`` (1, m, E_ie), ``ie_since`` (1, m) int64, ``ie_mask`` (1, m) bool, and
            the same for ``ipv``; an absent branch gets an empty (1, cap, 0) encoding and an
            all-False mask (its graph inputs are dropped anyway).
        """
        out = {}
        for k in SEQUENCES:
            seq, cap = self.sequences.get(k), self.caps[k]
            if seq is None:
                out[f"{k}_enc"] = torch.zeros(1, cap, 0)
                out[f"{k}_since"] = torch.zeros(1, cap, dtype=torch.int64)
                out[f"{k}_mask"] = torch.zeros(1, cap, dtype=torch.bool)
                continue
            enc, _, mask = seq.encodings()
            out[f"{k}_enc"] = enc[None]  # (1, cap, E)
            out[f"{k}_since"] = seq.since(now, decay)[None]  # (1, cap)
            out[f"{k}_mask"] = mask[None]  # (1, cap)
        return out

    def rerank(
        self,
        cand_emb: torch.Tensor,
        cand_score: torch.Tensor,
        cand_mask: torch.Tensor,
        now: float,
        decay: ActionSpec,
    ) -> torch.Tensor:
        """Score one request in PyTorch from the stored state.

        cand_emb (1, K, D), cand_score (1, K, S), cand_mask (1, K) → logits (1, K, 1).
        """
        b = self.rerank_inputs(now, decay)
        with torch.no_grad():
            return self.net.rerank(
                cand_emb,
                cand_score,
                cand_mask,
                b["ie_enc"] if "ie" in self.sequences else None,
                b["ie_since"],
                b["ie_mask"],
                b["ipv_enc"] if "ipv" in self.sequences else None,
                b["ipv_since"],
                b["ipv_mask"],
            )

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{"ie": ..., "ipv": ...}`` for the branches the model has."""
        return {k: seq.state_dict() for k, seq in self.sequences.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore a :meth:`state_dict` (same model shape and caps)."""
        if not isinstance(state, Mapping) or set(state) != set(self.sequences):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"behaviour state must have keys {sorted(self.sequences)}, got {got}")
        for k, seq in self.sequences.items():  # check all before changing any
            try:
                seq.check_state_dict(state[k])
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from e
        for k, seq in self.sequences.items():
            seq.load_state_dict(state[k])
