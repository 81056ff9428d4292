"""On-device reranker models, each split into a cloud part and a device network.

``build_model(cfg.model, schema, n_items)`` builds a registered model
(``shoal.registry.MODELS``): the EdgeRec family of Table 2 and the Kuaishou-style multi-task
reranker. See ``docs/models.md``.
"""

from __future__ import annotations

import logging

from shoal.client.models.base import INPUT_NAMES, DeviceNetwork
from shoal.client.models.cloud import CloudEmbeddings
from shoal.client.models.edgerec import EdgeRecConfig, EdgeRecNet
from shoal.client.models.kuaishou import KuaishouConfig, KuaishouNet
from shoal.client.models.reranker import Reranker
from shoal.config import ModelConfig
from shoal.datasets.schema import Schema
from shoal.registry import MODELS

log = logging.getLogger(__name__)

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


IDENTITY_SHARE = 0.5
"""A field with at least this many distinct values per catalog item is identity-like and left
out of the automatic field match (``ModelConfig.match_fields``)."""


def field_slices(mcfg: ModelConfig, schema: Schema) -> tuple[int, ...]:
    """Sizes of the per-field slices of the cloud part's item embedding, in order."""
    fields = (mcfg.field_dim,) * len(schema.item_vocab) if mcfg.field_dim else ()
    return fields + ((mcfg.id_dim,) if mcfg.id_dim else ())


def matched_fields(mcfg: ModelConfig, schema: Schema, n_items: int) -> tuple[int, ...]:
    """Indices (into :func:`field_slices`) of the fields the attention's field match compares.

    ``mcfg.match_fields`` names them; ``None`` keeps every field with fewer distinct values
    than ``IDENTITY_SHARE · n_items`` (never the item id), or, in a toy catalog where every
    field is that fine, all of them (with a warning). Raises ``ValueError`` for an unknown name
    or an empty list.
    """
    names = (schema.item_fields if mcfg.field_dim else ()) + (("item_id",) if mcfg.id_dim else ())
    vocab = (schema.item_vocab if mcfg.field_dim else ()) + ((n_items + 1,) if mcfg.id_dim else ())
    if mcfg.match_fields is None:
        keep = tuple(i for i, v in enumerate(vocab) if v - 1 < IDENTITY_SHARE * n_items)
        if not keep:
            log.warning(
                "every item field has >= %.0f%% as many values as the %d items; the field "
                "match compares all of them",
                100 * IDENTITY_SHARE,
                n_items,
            )
            keep = tuple(range(len(vocab)))
    else:
        unknown = sorted(set(mcfg.match_fields) - set(names))
        if unknown:
            raise ValueError(
                f"model.match_fields names {unknown}, not item fields of this model: {list(names)}"
            )
        wanted = set(mcfg.match_fields)
        keep = tuple(i for i, n in enumerate(names) if n in wanted)
    if not keep:
        raise ValueError(
            "model.match_fields is empty: name at least one item field, or set "
            "model.field_match=false"
        )
    return keep


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
            match=matched_fields(mcfg, schema, n_items) if mcfg.field_match else None,
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
