"""ONNX export of device networks and running them in ONNX Runtime.

Three graphs ship to a device (``docs/deployment.md``):

``device.onnx``
    The whole device network, ``forward`` over :data:`~shoal.client.models.base.INPUT_NAMES`
    → ``logits`` (B, K, T). Every registered model exports this graph.
``rerank.onnx`` (EdgeRec family)
    :meth:`EdgeRecNet.rerank` over :data:`RERANK_INPUT_NAMES`: scores the candidates from the
    *stored* behaviour encodings and the request-time time-since buckets, so a request does not
    rerun the behaviour GRUs.
``ie_step.onnx`` / ``ipv_step.onnx`` (HUBSM branches)
    :meth:`HUBSMEncoder.step` over :data:`STEP_INPUT_NAMES`: one new behaviour → its slot
    encoding and the new GRU states (one GRU step per layer), see :mod:`shoal.client.runtime`.

Batch ``B``, candidates ``K`` and sequence lengths ``m``, ``n`` are dynamic axes.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). With torch 2.13
the dynamo exporter cannot keep a GRU's sequence length dynamic: ``torch.export.export`` with
``dynamic_shapes`` fails with a constraint violation (*"You marked K as dynamic but your code
specialized it to be a constant"*) on exactly the axes that run through an ``nn.GRU`` (``K``
for every model with a list context, ``m`` and ``n`` too with HUBSM; ``dnn-rank`` exports
fine). ``torch.onnx.export(dynamo=True)`` relaxes those axes and succeeds anyway, but the GRU
outputs then carry the example's fixed lengths in the graph's shape annotations (the graph
happens to run at other lengths in ONNX Runtime, its declared shapes are wrong), and the
export takes 4-20 s per model. The TorchScript exporter maps ``nn.GRU`` to the ONNX ``GRU``
op with a symbolic sequence axis, in well under a second; the tests export at one
``K``/``m``/``n`` and run at others. It is deprecated in torch: revisit when ``torch.export``
keeps RNN lengths symbolic.

The TorchScript exporter drops inputs a graph does not use (``dnn-rank`` keeps only
``cand_emb`` and ``cand_score``): feed graphs through :func:`run_onnx`, which passes only the
inputs the graph kept.

The cloud part (embedding tables) is never exported: the graphs take embeddings as inputs, and
a ``device.onnx`` file holds exactly the device network's parameters and buffers: about
``net.size_bytes()`` plus ~12 % graph structure (a test checks it).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from shoal.client.export_inputs import random_inputs, rerank_inputs  # re-exported
from shoal.client.models.base import INPUT_NAMES, DeviceNetwork
from shoal.client.models.edgerec import EdgeRecNet
from shoal.client.models.parts import HUBSMEncoder

OPSET = 17
"""ONNX opset of the exported graphs (ONNX Runtime >= 1.14 runs it)."""

OUTPUT_NAMES = ("logits",)
"""Output of ``device.onnx`` and ``rerank.onnx``: (B, K, T) logits."""

RERANK_INPUT_NAMES = (
    "cand_emb",  # (B, K, D) float
    "cand_score",  # (B, K, S) float
    "cand_mask",  # (B, K) bool
    "ie_enc",  # (B, m, E_ie) float: stored IE slot encodings, oldest first
    "ie_since",  # (B, m) int64: time-since bucket of each IE slot at request time
    "ie_mask",  # (B, m) bool
    "ipv_enc",  # (B, n, E_ipv) float
    "ipv_since",  # (B, n) int64
    "ipv_mask",  # (B, n) bool
)
"""Inputs of ``rerank.onnx`` (the arguments of :meth:`EdgeRecNet.rerank`)."""

STEP_INPUT_NAMES = (
    "emb",  # (B, D) float: embedding of the new behaviour's item
    "act",  # (B, A) int64: its bucketized actions, without the time-since column
    "state",  # (2, L, B, H) float: item-GRU and action-GRU states
)
"""Inputs of a step graph (the arguments of :meth:`HUBSMEncoder.step`)."""

STEP_OUTPUT_NAMES = ("enc", "new_state")
"""Outputs of a step graph: the slot encoding (B, 2H) and the new state (2, L, B, H)."""

_AXES = {"cand": "K", "ie": "m", "ipv": "n"}


def _dynamic_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """Batch axis 0 and the sequence axis 1 of every ``cand_*``/``ie_*``/``ipv_*`` input."""
    return {k: {0: "B", 1: _AXES[k.split("_")[0]]} for k in names}


class _RerankGraph(nn.Module):
    """:meth:`EdgeRecNet.rerank` with an absent branch's encoding ignored (for tracing)."""

    def __init__(self, net: EdgeRecNet):
        super().__init__()
        self.net = net

    def forward(self, ce, cs, cm, ie_enc, ie_since, ie_mask, ipv_enc, ipv_since, ipv_mask):
        net = self.net
        return net.rerank(
            ce,
            cs,
            cm,
            ie_enc if net.ie is not None else None,
            ie_since,
            ie_mask,
            ipv_enc if net.ipv is not None else None,
            ipv_since,
            ipv_mask,
        )


class _StepGraph(nn.Module):
    """:meth:`HUBSMEncoder.step` as a module (for tracing)."""

    def __init__(self, encoder: HUBSMEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, emb, act, state):
        return self.encoder.step(emb, act, state)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the legacy exporter announces its deprecation; nn.GRU's input-size check reads
            # static feature sizes during tracing; the GRU batch warning is about packed
            # sequences (not used): none of them affects the graph
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings(
                "ignore", message=r"Exporting a model to ONNX with a batch_size"
            )
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    return path


def export_onnx(
    net: DeviceNetwork,
    path: str | Path,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export a device network's ``forward`` to ONNX.

    Parameters
    ----------
    net : DeviceNetwork
        ``Reranker.device`` of any registered model (exported in eval mode).
    path : str or Path
        Output file (parent folders are created).
    example_inputs : tuple of torch.Tensor, optional
        Nine tracing inputs in :data:`INPUT_NAMES` order (default :func:`random_inputs` with
        B=2, K=7, m=5, n=4). Their sizes do not matter: B, K, m, n are dynamic axes.
    opset : int

    Returns
    -------
    Path
        The written file. Inputs: those of :data:`INPUT_NAMES` the network uses; output
        ``logits`` (B, K, T).
    """
    if not isinstance(net, DeviceNetwork):
        raise TypeError(f"expected a DeviceNetwork (Reranker.device), got {type(net).__name__}")
    args = example_inputs if example_inputs is not None else random_inputs(net)
    if len(args) != len(INPUT_NAMES):
        raise ValueError(f"expected {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(args)}")
    axes = _dynamic_axes(INPUT_NAMES) | {"logits": {0: "B", 1: "K"}}
    return _export(net, tuple(args), path, INPUT_NAMES, OUTPUT_NAMES, axes, opset)


def export_rerank_onnx(
    net: EdgeRecNet,
    path: str | Path,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export :meth:`EdgeRecNet.rerank` (scoring from stored encodings) to ONNX.

    Parameters
    ----------
    net : EdgeRecNet
    path : str or Path
    example_inputs : tuple of torch.Tensor, optional
        Nine tracing inputs in :data:`INPUT_NAMES` (forward) order, converted with
        :func:`rerank_inputs`; default :func:`random_inputs`.
    opset : int

    Returns
    -------
    Path
        The written file. Inputs: those of :data:`RERANK_INPUT_NAMES` the network uses (an
        absent or HUISM branch has no ``*_since``; an absent branch no ``*_enc``/``*_mask``);
        output ``logits`` (B, K, 1).
    """
    if not isinstance(net, EdgeRecNet):
        raise TypeError(f"rerank graphs exist for EdgeRecNet only, got {type(net).__name__}")
    fwd = example_inputs if example_inputs is not None else random_inputs(net)
    args = rerank_inputs(net, tuple(fwd))
    axes = _dynamic_axes(RERANK_INPUT_NAMES) | {"logits": {0: "B", 1: "K"}}
    return _export(_RerankGraph(net), args, path, RERANK_INPUT_NAMES, OUTPUT_NAMES, axes, opset)


def export_step_onnx(encoder: HUBSMEncoder, path: str | Path, opset: int = OPSET) -> Path:
    """Export :meth:`HUBSMEncoder.step` (one new behaviour) to ONNX.

    Parameters
    ----------
    encoder : HUBSMEncoder
        ``net.ie.encoder`` or ``net.ipv.encoder`` of a HUBSM branch.
    path : str or Path
    opset : int

    Returns
    -------
    Path
        The written file. Inputs :data:`STEP_INPUT_NAMES` (``emb`` (B, D), ``act`` (B, A)
        int64 without the time-since column, ``state`` (2, L, B, H)); outputs
        :data:`STEP_OUTPUT_NAMES` (``enc`` (B, 2H), ``new_state`` (2, L, B, H)).
    """
    if not isinstance(encoder, HUBSMEncoder):
        raise TypeError(f"step graphs exist for HUBSMEncoder only, got {type(encoder).__name__}")
    g = torch.Generator().manual_seed(0)
    B = 2
    D = encoder.item_gru.input_size
    vocab = [t.num_embeddings for t in encoder.actions.tables]
    act = torch.stack([torch.randint(1, v, (B,), generator=g) for v in vocab], dim=-1)  # (B, A)
    state = torch.randn(2, encoder.layers, B, encoder.hidden, generator=g)
    args = (torch.randn(B, D, generator=g), act, state)
    axes = {
        "emb": {0: "B"},
        "act": {0: "B"},
        "state": {2: "B"},
        "enc": {0: "B"},
        "new_state": {2: "B"},
    }
    return _export(
        _StepGraph(encoder), args, path, STEP_INPUT_NAMES, STEP_OUTPUT_NAMES, axes, opset
    )


def export_device(net: DeviceNetwork, out_dir: str | Path, opset: int = OPSET) -> dict[str, Path]:
    """Every graph a device needs: ``device``, and for EdgeRec ``rerank`` and the HUBSM steps.

    Returns
    -------
    dict of str to Path
        ``{"device": .../device.onnx}``, plus ``"rerank"`` for an :class:`EdgeRecNet` and
        ``"ie_step"`` / ``"ipv_step"`` for each HUBSM branch.
    """
    out = Path(out_dir)
    paths = {"device": export_onnx(net, out / "device.onnx", opset=opset)}
    if isinstance(net, EdgeRecNet):
        paths["rerank"] = export_rerank_onnx(net, out / "rerank.onnx", opset=opset)
        for name, branch in (("ie", net.ie), ("ipv", net.ipv)):
            if branch is not None and isinstance(branch.encoder, HUBSMEncoder):
                paths[f"{name}_step"] = export_step_onnx(
                    branch.encoder, out / f"{name}_step.onnx", opset=opset
                )
    return paths


OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
"""Names of ONNX Runtime's graph optimization levels."""


def onnx_session(
    path: str | Path, threads: int = 1, optimization: str = "all"
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for an exported graph.

    Parameters
    ----------
    path : str or Path
    threads : int
        Intra-op threads (a phone reranks on one core; inter-op is always 1, sequential).
    optimization : {"disable", "basic", "extended", "all"}
        ONNX Runtime graph optimization level.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(
            f"optimization must be one of {tuple(OPTIMIZATION_LEVELS)}, got {optimization!r}"
        )
    if not Path(path).is_file():
        raise ValueError(f"no ONNX file at {path}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def run_onnx(
    session: ort.InferenceSession, inputs: Mapping[str, np.ndarray | torch.Tensor]
) -> dict[str, np.ndarray]:
    """Run a session on the inputs the graph kept.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    inputs : mapping of str to array or tensor
        By name (e.g. ``dict(zip(INPUT_NAMES, tensors))``); names the graph dropped are
        ignored. Tensors are converted to numpy; dtypes must match the graph's (float32,
        int64, bool).

    Returns
    -------
    dict of str to np.ndarray
        Outputs by name, e.g. ``{"logits": (B, K, T)}``.
    """
    feed = {}
    for node in session.get_inputs():
        if node.name not in inputs:
            raise ValueError(f"graph input {node.name!r} is missing; got {sorted(inputs)}")
        x = inputs[node.name]
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        want = _ORT_DTYPES.get(node.type)
        if want is not None and arr.dtype != want:
            raise ValueError(
                f"input {node.name!r} has dtype {arr.dtype}, the graph expects {np.dtype(want)}"
            )
        feed[node.name] = arr
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))
