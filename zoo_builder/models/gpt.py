"""GPT-2 of the phase-transition language zoo, nanoGPT style, width-scaled by ``model_dim``.

Token and learned position embeddings, ``n_layer`` pre-norm blocks with causal self-attention
and a 4x GeLU MLP, a final LayerNorm, and an LM head tied to the token embedding. The paper's
model_dims {192, 276, 384, 540, 768, 1092, 1536, 2172} are all divisible by the default 12 heads;
model_dim 768 with vocab 50257 and block 1024 is GPT-2 small (124,439,808 parameters).

Module names (the blocks are the ViT's, see :mod:`zoo_builder.models.vit`)::

    token_embedding            Embedding(vocab_size, dim); also the LM head (logits = h @ W^T)
    position_embedding         Embedding(block_size, dim)
    blocks.{i}                 TransformerBlock, i = 0 .. n_layer - 1
        norm1, norm2           LayerNorm(dim)
        attention.query/key/value/output   Linear(dim, dim), causal
        mlp.fc1                Linear(dim, 4 dim)
        mlp.activation         GELU (exact, as nanoGPT's nn.GELU)
        mlp.fc2                Linear(4 dim, dim)
    norm                       final LayerNorm(dim)

The LM head is not a module of its own: the logits are ``F.linear(h, token_embedding.weight)``,
so the tied weight appears once in ``state_dict()`` and ``parameters()`` (safetensors refuses
tensors that share memory, and a parameter count needs no de-duplication).

Init (``init_type``): ``"kaiming_uniform"`` (the paper's Table 3) gives every linear weight and
both embeddings the zoos' Kaiming-uniform init (fan-in = dim for the embeddings, as for the head
they double as) and zero biases; ``"normal"`` is nanoGPT's N(0, 0.02) for weights and embeddings,
with the residual projections (``attention.output``, ``mlp.fc2``) at 0.02 / sqrt(2 n_layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo_builder.models.resnet import init_kaiming_uniform
from zoo_builder.models.vit import TransformerBlock

#: Values of ``init_type`` that :func:`gpt2` accepts.
GPT_INIT_TYPES = ("kaiming_uniform", "normal")


class GPT(nn.Module):
    """Decoder-only transformer: ``forward(idx)`` maps token ids (B, T) to logits (B, T, vocab)."""

    def __init__(self, model_dim: int, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                 dropout: float, bias: bool, init_type: str):
        super().__init__()
        if init_type not in GPT_INIT_TYPES:
            raise ValueError(f"unknown init_type {init_type!r} for gpt2; "
                             f"known: {list(GPT_INIT_TYPES)}")
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, model_dim)
        self.position_embedding = nn.Embedding(block_size, model_dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(model_dim, n_head, 4 * model_dim, nn.GELU, causal=True,
                             dropout=dropout, bias=bias)
            for _ in range(n_layer)
        )
        self.norm = nn.LayerNorm(model_dim, bias=bias)
        if init_type == "kaiming_uniform":
            init_kaiming_uniform(self)
            for embedding in (self.token_embedding, self.position_embedding):
                nn.init.kaiming_uniform_(embedding.weight, nonlinearity="relu")
        else:
            self._init_normal(n_layer)

    def _init_normal(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attention.output, block.mlp.fc2):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        tokens = idx.shape[1]
        if tokens > self.block_size:
            raise ValueError(
                f"sequence of length {tokens} is longer than the model's block_size "
                f"{self.block_size}; crop the input to its last {self.block_size} tokens"
            )
        positions = torch.arange(tokens, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.token_embedding.weight)


def gpt2(model_dim: int, vocab_size: int = 50304, block_size: int = 1024, n_layer: int = 12,
         n_head: int = 12, dropout: float = 0.0, bias: bool = True,
         init_type: str = "kaiming_uniform") -> GPT:
    """GPT-2 of width ``model_dim`` (head dim ``model_dim / n_head``); 50304 is nanoGPT's padded
    GPT-2 vocabulary."""
    return GPT(model_dim, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
               n_head=n_head, dropout=dropout, bias=bias, init_type=init_type)
