"""Vision Transformer of the phase-transition ViT zoos, and the transformer block GPT-2 shares.

``embedding_dim`` is the zoo's width (the paper's {6, 12, 24, 48, 60, 96, 192}, all divisible by
the default 3 heads). The image is cut into patches by a strided convolution, a class token and
learned position embeddings are added, pre-norm transformer blocks follow, and the class token's
final representation is classified. As in the paper's Table 2 the MLP uses ReLU and the linear and
convolution weights get the zoos' Kaiming-uniform init (zero biases); the class token and the
position embeddings, which have no fan-in, are drawn from N(0, 0.02) truncated at +-2 std.

Module names (weight-space code such as graph metanetworks and git re-basin walks them)::

    patch_embedding            Conv2d(in_channels, dim, patch, stride=patch), with bias
    cls_token                  Parameter (1, 1, dim)
    position_embedding         Parameter (1, 1 + num_patches, dim); token 0 is the class token
    blocks.{i}                 TransformerBlock, i = 0 .. depth - 1
        norm1                  LayerNorm(dim)
        attention.query        Linear(dim, dim); head h owns output features
        attention.key          Linear(dim, dim)    h * dim / heads .. (h + 1) * dim / heads - 1
        attention.value        Linear(dim, dim)    of query, key and value
        attention.output       Linear(dim, dim)
        norm2                  LayerNorm(dim)
        mlp.fc1                Linear(dim, mlp_hidden)
        mlp.activation         ReLU (no parameters)
        mlp.fc2                Linear(mlp_hidden, dim)
    norm                       LayerNorm(dim), applied before the head
    head                       Linear(dim, num_classes)

A block computes ``x = x + attention(norm1(x)); x = x + mlp(norm2(x))``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zoo_builder.models.resnet import init_kaiming_uniform


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value/output projections."""

    def __init__(self, dim: int, heads: int, causal: bool = False, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}; "
                             f"choose a number of heads that divides {dim}")
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        self.output = nn.Linear(dim, dim, bias=bias)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split_heads(projection: nn.Linear) -> torch.Tensor:
            return projection(x).view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split_heads(self.query), split_heads(self.key), split_heads(self.value),
            dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal,
        )
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.output_dropout(self.output(out))


class MLP(nn.Module):
    """Two linear layers with an activation between them (ReLU in the ViT, GeLU in GPT-2)."""

    def __init__(self, dim: int, hidden: int, activation: type[nn.Module], dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.activation = activation()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, activation: type[nn.Module],
                 causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.attention = SelfAttention(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, mlp_hidden, activation, dropout=dropout, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer on ``image_size`` x ``image_size`` images; see the module docstring."""

    def __init__(self, embedding_dim: int, num_classes: int, in_channels: int, image_size: int,
                 patch_size: int, depth: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} is not divisible by "
                             f"patch_size={patch_size}; pick a patch size that divides it")
        self.image_size, self.patch_size = image_size, patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(in_channels, embedding_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embedding_dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + num_patches, embedding_dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embedding_dim, heads, int(mlp_ratio * embedding_dim), nn.ReLU,
                             dropout=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)
        init_kaiming_uniform(self)
        for token in (self.cls_token, self.position_embedding):
            nn.init.trunc_normal_(token, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT built for {self.image_size}x{self.image_size} images got input of shape "
                f"{tuple(x.shape)}; build it with image_size={x.shape[-1]} or resize the input"
            )
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        tokens = self.dropout(torch.cat([cls, tokens], dim=1) + self.position_embedding)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def vit(embedding_dim: int, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
        patch_size: int | None = None, depth: int = 6, heads: int = 3, mlp_ratio: float = 2,
        dropout: float = 0.0) -> ViT:
    """ViT of width ``embedding_dim``; ``patch_size=None`` takes ``image_size // 8`` (64 patches:
    patch 4 on 32x32, 8 on 64x64, 1 on 8x8 digits)."""
    if patch_size is None:
        if image_size % 8 != 0:
            raise ValueError(f"image_size={image_size} is not a multiple of 8, so the default "
                             f"patch size image_size // 8 does not tile it; pass patch_size")
        patch_size = image_size // 8
    return ViT(embedding_dim, num_classes=num_classes, in_channels=in_channels,
               image_size=image_size, patch_size=patch_size, depth=depth, heads=heads,
               mlp_ratio=mlp_ratio, dropout=dropout)
