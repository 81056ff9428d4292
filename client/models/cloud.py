"""The cloud part of a reranker: item embedding tables.

In EdgeRec's deployment the item embeddings stay in a cloud key-value store: the cloud looks
them up and ships each candidate's vector with the page (tagged with the model version), and
the device keeps the vectors of items it has seen for its behaviour sequences. The device
network therefore never holds a table the size of the catalog.
"""

from __future__ import annotations

import torch
from torch import nn

EMBED_STD = 0.05
"""Initial standard deviation of every embedding table (small, so id and field tables start on
the same scale)."""


class CloudEmbeddings(nn.Module):
    """Item-field and item-id embedding tables, concatenated per item.

    Parameters
    ----------
    item_vocab : tuple of int
        Vocabulary size of each categorical item field (padding id 0 included).
    n_items : int
        Catalog size ``I``; item ids are ``1..I`` and 0 is padding.
    field_dim : int
        Embedding size per field (0 = no field embeddings).
    id_dim : int
        Item-id embedding size (0 = no id embedding).
    """

    def __init__(self, item_vocab: tuple[int, ...], n_items: int, field_dim: int, id_dim: int):
        super().__init__()
        if field_dim + id_dim <= 0:
            raise ValueError("the cloud part needs field_dim + id_dim > 0")
        vocab = item_vocab if field_dim else ()
        self.fields = nn.ModuleList(nn.Embedding(int(v), field_dim, padding_idx=0) for v in vocab)
        self.item_id = nn.Embedding(n_items + 1, id_dim, padding_idx=0) if id_dim else None
        self.out_dim = field_dim * len(self.fields) + id_dim
        for p in self.parameters():
            nn.init.normal_(p, std=EMBED_STD)
        for emb in self.embeddings():
            with torch.no_grad():
                emb.weight[0].zero_()

    def embeddings(self) -> list[nn.Embedding]:
        return [*self.fields, *([self.item_id] if self.item_id is not None else [])]

    def forward(self, item: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Look up items.

        Parameters
        ----------
        item : torch.Tensor
            (...,) int64 item ids (0 = padding, looked up as zeros).
        feat : torch.Tensor
            (..., F) int64 item fields.

        Returns
        -------
        torch.Tensor
            (..., D) float with ``D = out_dim``.
        """
        parts = [emb(feat[..., i]) for i, emb in enumerate(self.fields)]
        if self.item_id is not None:
            parts.append(self.item_id(item))
        return torch.cat(parts, dim=-1)
