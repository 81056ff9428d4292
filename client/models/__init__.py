"""On-device reranker models, each split into a cloud part and a device network.

``build_model(cfg.model, schema, n_items)`` builds a registered model
(``shoal.registry.MODELS``): the EdgeRec family of Table 2 and the Kuaishou-style multi-task
reranker. See ``docs/models.md``.
"""

from __future__ import annotations

from shoal.client.models.base import INPUT_NAMES, DeviceNetwork
from shoal.client.models.cloud import CloudEmbeddings
from shoal.client.models.edgerec import EdgeRecConfig, EdgeRecNet
from shoal.client.models.kuaishou import KuaishouConfig, KuaishouNet
from shoal.client.models.reranker import Reranker
from shoal.config import ModelConfig
from shoal.datasets.schema import Schema
from shoal.registry import MODELS

EDGEREC_VARIANTS: dict[str, tuple[bool, str, str]] = {
    # name: (list context, IE model, IPV model)
    "dnn-rank": (False, "none", "none"),
    "dlcm": (True, "none", "none"),
    "crban-hubsm-ie": (True, "hubsm", "none"),
    "crban-hubsm-ipv": (True, "none", "hubsm"),
    "crban-huism": (True, "huism", "huism"),
    "crban-hubsm": (True, "hubsm", "hubsm"),
}
"""EdgeRec's Table 2 rows, in the paper's order."""
EDGEREC_ALIASES = {"edgerec": "crban-hubsm"}


def _cloud(mcfg: ModelConfig, schema: Schema, n_items: int) -> CloudEmbeddings:
    return CloudEmbeddings(schema.item_vocab, n_items, mcfg.field_dim, mcfg.id_dim)


def field_slices(mcfg: ModelConfig, schema: Schema) -> tuple[int, ...]:
    """Sizes of the per-field slices of the cloud part's item embedding, in order."""
    fields = (mcfg.field_dim,) * len(schema.item_vocab) if mcfg.field_dim else ()
    return fields + ((mcfg.id_dim,) if mcfg.id_dim else ())


def _edgerec(name: str):
    list_context, ie, ipv = EDGEREC_VARIANTS[name]

    def build(mcfg: ModelConfig, schema: Schema, n_items: int) -> Reranker:
        cloud = _cloud(mcfg, schema, n_items)
        cfg = EdgeRecConfig(
            emb_dim=cloud.out_dim,
            n_scores=len(schema.score_names),
            ie_action_vocab=schema.ie_action_vocab,
            ipv_action_vocab=schema.ipv_action_vocab,
            list_context=list_context,
            ie=ie,
            ipv=ipv,
            hidden=mcfg.hidden,
            gru_layers=mcfg.gru_layers,
            attention=mcfg.attention,
            mlp=tuple(mcfg.mlp),
            action_dim=mcfg.action_dim,
            time_dim=mcfg.time_dim,
            dropout=mcfg.dropout,
            query=mcfg.query,
            attention_mass=mcfg.attention_mass,
            attention_match=mcfg.attention_match,
            fields=field_slices(mcfg, schema) if mcfg.field_match else (),
        )
        return Reranker(name, cloud, EdgeRecNet(cfg))

    return build


for _name in EDGEREC_VARIANTS:
    MODELS.register(_name)(_edgerec(_name))
for _alias, _target in EDGEREC_ALIASES.items():
    MODELS.register(_alias)(MODELS.get(_target))


@MODELS.register("kuaishou")
def _kuaishou(mcfg: ModelConfig, schema: Schema, n_items: int) -> Reranker:
    cloud = _cloud(mcfg, schema, n_items)
    cfg = KuaishouConfig.from_model_config(
        mcfg,
        emb_dim=cloud.out_dim,
        n_scores=len(schema.score_names),
        ie_action_vocab=schema.ie_action_vocab,
        ipv_action_vocab=schema.ipv_action_vocab,
        label_names=schema.label_names,
    )
    return Reranker("kuaishou", cloud, KuaishouNet(cfg))


def build_model(mcfg: ModelConfig, schema: Schema, n_items: int) -> Reranker:
    """The model ``mcfg.name`` for a dataset with this schema and catalog size."""
    return MODELS.get(mcfg.name)(mcfg, schema, n_items)


__all__ = [
    "EDGEREC_VARIANTS",
    "INPUT_NAMES",
    "CloudEmbeddings",
    "DeviceNetwork",
    "EdgeRecConfig",
    "EdgeRecNet",
    "KuaishouConfig",
    "KuaishouNet",
    "Reranker",
    "build_model",
]
