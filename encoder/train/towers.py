"""redrec's tiny towers (trained from scratch) and the projection head every tower ends in."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SCENARIOS = ["homefeed", "search", "ads"]


class Block(nn.Module):
    """Pre-LayerNorm transformer block written with plain matmuls so it exports cleanly."""

    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x, bias):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // self.heads)) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.out(y)
        return x + self.ff(self.ln2(x))


class Head(nn.Module):
    """Projection head of RED-Rec: linear, GELU MLP with residual, LayerNorm, L2 norm."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(nn.Linear(d_out, 2 * d_out), nn.GELU(), nn.Linear(2 * d_out, d_out))
        self.ln = nn.LayerNorm(d_out)

    def forward(self, h):
        z = self.proj(h)
        return F.normalize(self.ln(z + self.mlp(z)), dim=-1)


def small_init(module):
    """Embeddings start small (std 0.02): at the default N(0, 1), scenario and position
    embeddings drown the item vectors a user tower reads, and every user looks the same."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    return module


def attention_bias(mask):
    return (1.0 - mask[:, None, None, :].float()) * -1e4


class ItemTower(nn.Module):
    """Text -> tiny transformer; the state at an appended learnable token -> 64-d."""

    def __init__(self, vocab, dim, d=96, layers=2, heads=4, max_tokens=48):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_tokens, d)
        self.emb_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, 4 * d) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = Head(d, dim)

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        x = self.tok(input_ids) + self.pos.weight[:t]
        x = torch.cat([x, self.emb_token.expand(b, 1, -1)], 1)
        mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
        bias = attention_bias(mask)
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.ln(x[:, -1]))


class UserTower(nn.Module):
    """Item-vector sequence + scenario + recency -> transformer; Q appended query tokens -> Q x 64-d."""

    def __init__(self, dim, n_queries, max_history, d=96, layers=2, heads=4):
        super().__init__()
        self.inp = nn.Linear(dim, d)
        self.scenario = nn.Embedding(len(SCENARIOS), d)
        self.recency = nn.Embedding(max_history, d)
        self.queries = nn.Parameter(torch.randn(1, n_queries, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, 4 * d) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = Head(d, dim)
        self.n_queries = n_queries
        self.max_history = max_history

    def forward(self, history, scenario, mask):
        b = history.shape[0]
        # Distance from the newest event, whichever side the batch is padded on.
        from_end = (mask.sum(1, keepdim=True) - mask.cumsum(1)).clamp(0, self.max_history - 1)
        x = self.inp(history) + self.scenario(scenario) + self.recency(from_end)
        x = torch.cat([x, self.queries.expand(b, -1, -1)], 1)
        m = torch.cat([mask, torch.ones(b, self.n_queries, dtype=mask.dtype)], 1)
        bias = attention_bias(m)
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.ln(x[:, -self.n_queries :]))
