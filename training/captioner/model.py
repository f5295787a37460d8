"""The captioner: a small CNN + transformer encoder over the scene, a transformer decoder over words.

``CaptionNet`` maps a scene uint8 [b, 64, 64, 3] to an 8x8 grid of feature tokens (a CoordConv
CNN: x and y are input channels, so every feature knows where it is; then two self-attention
layers in which every cell can look at every other -- the pairwise comparisons that ``near`` and
``far`` need, as in a Relation Network) and decodes the caption with a two-layer transformer
decoder (causal self-attention over the words so far, cross-attention over the grid).

Training is teacher-forced (:meth:`CaptionNet.forward`: every position at once, causal mask).
Decoding is :meth:`CaptionNet.greedy`: one word at a time with a key/value cache, the arg-max
word each step, until ``<eos>``. ``ExportedCaptioner`` is the served graph: the same greedy loop,
unrolled to :data:`~training.captioner.data.MAX_TOKENS` steps when traced, so ONNX Runtime runs
the whole decoding in one session call and serving's micro-batching stays as for the other
kinds. It outputs ``tokens`` int64 [b, T] (after ``<eos>``: ``<pad>``) and ``token_probs``
float32 [b, T] (the probability of each chosen word; 1.0 after ``<eos>``, so the product over a
row is the caption's joint probability).

Why greedy and not beam search: a search that maximises the caption's probability can only fix a
wrong greedy caption whose reference the model finds more probable; the training script counts
those on the test set (``errors_a_search_could_fix``: 0 of 16 for the shipped model), and beam
search would cost beam-width times the decoding (docs/captioner.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.captioner.args import ATTENTION_HEADS
from training.captioner.data import BOS_ID, EOS_ID, IMAGE_SIZE, MAX_TOKENS, PAD_ID, VOCABULARY

GRID = 8  # the encoder's output grid (stride 8)
OUTPUT_NAMES = ("tokens", "token_probs")


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Multi-head scaled dot-product attention; q [b, m, d], k and v [b, n, d], mask [m, n] (True: blocked)."""
    b, m, d = q.shape
    n = k.shape[1]
    q = q.reshape(b, m, heads, d // heads).transpose(1, 2)
    k = k.reshape(b, n, heads, d // heads).transpose(1, 2)
    v = v.reshape(b, n, heads, d // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, m, d)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(attend(self.q(x), self.k(context), self.v(context), self.heads, mask))


def _feed_forward(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.ff = Attention(d, heads), _feed_forward(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        return x + self.ff(self.norm2(x))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn, self.cross_attn, self.ff = Attention(d, heads), Attention(d, heads), _feed_forward(d)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, causal)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.ff(self.norm3(x))

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None,
             memory_kv: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One new position x [b, 1, d] given the keys/values of the earlier ones (the same
        arithmetic as :meth:`forward` at that position)."""
        h = self.norm1(x)
        k, v = self.self_attn.k(h), self.self_attn.v(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
        a = self.self_attn
        x = x + a.out(attend(a.q(h), k, v, a.heads))
        c = self.cross_attn
        x = x + c.out(attend(c.q(self.norm2(x)), memory_kv[0], memory_kv[1], c.heads))
        return x + self.ff(self.norm3(x)), (k, v)


class CaptionNet(nn.Module):
    """Scene uint8 [b, 64, 64, 3] -> word logits [b, T, V] (teacher-forced) or greedy captions."""

    def __init__(self, d: int = 96, heads: int = ATTENTION_HEADS, encoder_layers: int = 2, decoder_layers: int = 2
                 ) -> None:
        super().__init__()
        if d < 4 or d % heads:  # the CNN's first layer has d // 4 channels; each head gets d // heads
            raise ValueError(f"width {d} must be a multiple of the {heads} heads and >= 4")
        self.cnn = nn.Sequential(*_conv(5, d // 4, 2), *_conv(d // 4, d // 2, 2), *_conv(d // 2, d // 2, 1),
                                 *_conv(d // 2, d, 2))
        self.grid_position = nn.Parameter(torch.randn(GRID * GRID, d) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(d, heads) for _ in range(encoder_layers))
        self.memory_norm = nn.LayerNorm(d)
        self.embed = nn.Embedding(len(VOCABULARY), d)
        self.word_position = nn.Parameter(torch.randn(MAX_TOKENS, d) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(d, heads) for _ in range(decoder_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, len(VOCABULARY))
        ramp = torch.linspace(-1.0, 1.0, IMAGE_SIZE)
        self.register_buffer("coords", torch.stack([ramp[None, :].expand(IMAGE_SIZE, -1),
                                                    ramp[:, None].expand(-1, IMAGE_SIZE)])[None], persistent=False)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        # Preprocessing in the graph: uint8 HWC -> float CHW in 0..1, plus the coordinate channels.
        x = image.permute(0, 3, 1, 2).float() / 255.0
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1)
        memory = self.cnn(x).flatten(2).transpose(1, 2) + self.grid_position  # [b, 64, d]
        for layer in self.encoder:
            memory = layer(memory)
        return self.memory_norm(memory)

    def forward(self, image: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits [b, T, V] of each target word given the words before it (teacher forcing)."""
        memory = self.encode(image)
        inputs = torch.cat([torch.full_like(targets[:, :1], BOS_ID), targets[:, :-1]], 1)
        length = inputs.shape[1]
        x = self.embed(inputs) + self.word_position[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        for layer in self.decoder:
            x = layer(x, memory, causal)
        return self.head(self.final_norm(x))

    def greedy(self, image: torch.Tensor, steps: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: (tokens int64 [b, steps], probabilities [b, steps]); after <eos> the
        token is <pad> with probability 1."""
        memory = self.encode(image)
        memory_kv = [(layer.cross_attn.k(memory), layer.cross_attn.v(memory)) for layer in self.decoder]
        batch = image.shape[0]
        word = torch.full((batch,), BOS_ID, dtype=torch.int64, device=image.device)
        done = torch.zeros(batch, dtype=torch.bool, device=image.device)
        caches: list = [None] * len(self.decoder)
        tokens, probs = [], []
        for t in range(steps):
            x = (self.embed(word) + self.word_position[t])[:, None]
            for i, layer in enumerate(self.decoder):
                x, caches[i] = layer.step(x, caches[i], memory_kv[i])
            p, word = self.head(self.final_norm(x[:, 0])).softmax(-1).max(-1)
            word = torch.where(done, torch.full_like(word, PAD_ID), word)
            p = torch.where(done, torch.ones_like(p), p)
            tokens.append(word)
            probs.append(p)
            done = done | (word == EOS_ID)
        return torch.stack(tokens, 1), torch.stack(probs, 1)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the words and the <eos> (padding ignored)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)


class ExportedCaptioner(nn.Module):
    """The served graph: scene uint8 [b, 64, 64, 3] -> tokens int64 [b, T], token_probs [b, T]."""

    def __init__(self, net: CaptionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.greedy(image)
