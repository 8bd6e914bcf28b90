"""Trains redrec's towers on a dataset in `redrec dataset`'s layout and exports them to the
ONNX contract (see DESIGN: item_tower.onnx, user_tower.onnx, tokenizer.json, manifest.json),
checking ONNX Runtime against PyTorch on every export.

The towers are tiny transformers trained from scratch (the default), or built on frozen
pretrained backbones (see backbones.py): `--item-backbone minilm|smollm2`,
`--user-backbone smollm2`.

Run through encoder/train/train.sh, which generates the synthetic dataset with
`redrec dataset synth` and takes the backbone as its first argument.
"""

import argparse
import hashlib
import json
import math
import os
import random
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from towers import SCENARIOS, ItemTower, UserTower, small_init

def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=32))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"])
    tok.train_from_iterator(texts, trainer)
    return tok


def tokenize(tok, texts, max_tokens):
    encodings = tok.encode_batch(texts, add_special_tokens=True)  # as the encoder does
    max_tokens = min(max_tokens, max(len(e.ids) for e in encodings))
    ids = np.zeros((len(texts), max_tokens), dtype=np.int64)
    mask = np.zeros((len(texts), max_tokens), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), max_tokens)
        ids[row, :n] = enc.ids[:n]
        mask[row, :n] = 1
    return ids, mask


def make_samples(users, item_index, max_history, targets, rng):
    """Cut points in each user's history (never the holdout): the window before -> the next items."""
    samples = []
    for u in users:
        events = [(item_index[e["item_id"]], SCENARIOS.index(e["scenario"])) for e in u["history"]]
        for _ in range(4):
            cut = rng.randrange(8, len(events) - 1)
            hist = events[max(0, cut - max_history) : cut]
            seen = {i for i, _ in hist}
            nxt = [i for i, s in events[cut:] if s == 0 and i not in seen][:targets]
            if nxt:
                samples.append((hist, nxt))
    return samples


def pad_batch(batch, max_history):
    b = len(batch)
    idx = np.zeros((b, max_history), dtype=np.int64)
    scen = np.zeros((b, max_history), dtype=np.int64)
    mask = np.zeros((b, max_history), dtype=np.int64)
    for row, (hist, _) in enumerate(batch):
        n = len(hist)
        idx[row, :n] = [i for i, _ in hist]
        scen[row, :n] = [s for _, s in hist]
        mask[row, :n] = 1
    return idx, scen, mask


def max_query_loss(queries, batch, items, logit_scale, rng, args, n_items):
    """One target per window, scored by the best of the Q queries, against in-batch and
    random negatives."""
    positives = [rng.choice(nxt) for _, nxt in batch]
    negatives = rng.sample(range(n_items), args.negatives)
    cand = np.array(positives + negatives)
    cv = items(cand)  # [B+N, D]
    scores = torch.einsum("bqd,nd->bqn", queries, cv).max(1).values  # max over queries
    scores = scores * logit_scale.clamp(max=math.log(100)).exp()
    # The same item elsewhere in the candidates is not a negative.
    same = torch.from_numpy(cand[None, :] == np.array(positives)[:, None])
    same[torch.arange(len(batch)), torch.arange(len(batch))] = False
    scores = scores.masked_fill(same, -1e4)
    return F.cross_entropy(scores, torch.arange(len(batch)))


def cluster_targets(vectors, q, iters=5):
    """k-means of one window's target vectors into (at most) q groups; labels per target."""
    n = len(vectors)
    k = min(q, n)
    centroids = vectors[np.linspace(0, n - 1, k).astype(int)]
    for _ in range(iters):
        labels = np.argmax(vectors @ centroids.T, axis=1)
        for j in range(k):
            members = vectors[labels == j]
            if len(members):
                c = members.mean(0)
                centroids[j] = c / max(np.linalg.norm(c), 1e-12)
    return np.argmax(vectors @ centroids.T, axis=1), centroids


def hungarian_loss(queries, batch, table, items, logit_scale, rng, args):
    """RED-Rec's multi-interest objective: each window's next targets are clustered into Q
    groups, the groups matched one-to-one to the Q queries by the Hungarian algorithm
    (on query-centroid similarity), and each matched query must rank a target of its group
    above in-batch and random negatives (items equal to the positive, or nearly so, masked)."""
    from scipy.optimize import linear_sum_assignment

    table_np = table.numpy()
    rows, cols, positives = [], [], []
    with torch.no_grad():
        q_np = queries.detach().numpy()
    for b, (_, nxt) in enumerate(batch):
        labels, centroids = cluster_targets(table_np[np.array(nxt)], args.queries)
        r, c = linear_sum_assignment(-(q_np[b] @ centroids.T))
        for qi, cj in zip(r, c):
            members = [t for t, l in zip(nxt, labels) if l == cj]
            if members:
                rows.append(b)
                cols.append(qi)
                positives.append(rng.choice(members))
    negatives = rng.sample(range(len(table_np)), args.negatives)
    cand = np.array(positives + negatives)
    cv = items(cand)  # [P+N, D]
    qsel = queries[torch.tensor(rows), torch.tensor(cols)]  # [P, D]
    scores = (qsel @ cv.T) * logit_scale.clamp(max=math.log(100)).exp()
    p = len(positives)
    # False negatives: the same item, or one the table says is nearly identical (cos > 0.98).
    pos_v = table_np[np.array(positives)]
    near = (pos_v @ table_np[cand].T) > 0.98
    same = torch.from_numpy((cand[None, :] == np.array(positives)[:, None]) | near)
    same[torch.arange(p), torch.arange(p)] = False
    scores = scores.masked_fill(same, -1e4)
    return F.cross_entropy(scores, torch.arange(p))


def build_towers(args, texts):
    """(item tower, user tower, tokenizer) for the chosen backbones."""
    llm = None
    if "smollm2" in (args.item_backbone, args.user_backbone):
        from backbones import load_backbone

        llm, llm_tok = load_backbone("smollm2", args.llm_layers)
    if args.item_backbone == "tiny":
        tok = build_tokenizer(texts, args.vocab)
        item_tower = small_init(ItemTower(tok.get_vocab_size(), args.dim, max_tokens=args.max_tokens))
    else:
        from backbones import PretrainedItemTower, load_backbone

        model, tok = (llm, llm_tok) if args.item_backbone == "smollm2" else load_backbone(args.item_backbone)
        item_tower = PretrainedItemTower(args.item_backbone, model, tok, args.dim, args.item_pooling)
    if args.user_backbone == "tiny":
        user_tower = small_init(UserTower(args.dim, args.queries, args.max_history))
    else:
        from backbones import LlmUserTower

        user_tower = LlmUserTower(llm, args.dim, args.queries)
    return item_tower, user_tower, tok


def backbone_features(item_tower, ids_all, mask_all, batch, started):
    """Every item's pooled backbone state, [N, H], computed once (the backbone is frozen)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(ids_all), batch):
            ids, mask = ids_all[i : i + batch], mask_all[i : i + batch]
            t = int(mask.sum(1).max())  # this batch's own padding, not the catalogue's
            out.append(item_tower.features(ids[:, :t], mask[:, :t]))
            if (i // batch) % 20 == 0:
                print(f"backbone states {i + len(ids):6d}/{len(ids_all)}  {time.time() - started:.0f}s", flush=True)
    return torch.cat(out)


def train(args):
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    items = load_jsonl(os.path.join(args.data, "items.jsonl"))
    users = load_jsonl(os.path.join(args.data, "users.jsonl"))
    item_index = {it["id"]: n for n, it in enumerate(items)}
    texts = [it["text"] for it in items]
    item_tower, user_tower, tok = build_towers(args, texts)
    ids_np, mask_np = tokenize(tok, texts, args.max_tokens)
    ids_all, mask_all = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
    started = time.time()
    if args.item_backbone == "tiny":
        # Two views of each item (title; category and tags) for the item tower's own
        # contrastive loss: it spreads items by content from the start, which keeps the
        # towers from collapsing onto one vector before the user signal takes hold.
        views = [tokenize(tok, [it["title"] for it in items], args.max_tokens),
                 tokenize(tok, [it["category"] + " | " + " ".join(it["tags"]) for it in items], args.max_tokens)]
        views = [(torch.from_numpy(i), torch.from_numpy(m)) for i, m in views]

        def item_vectors(idx):
            return item_tower(ids_all[idx], mask_all[idx])
    else:
        # A frozen pretrained backbone: each item's pooled state is computed once, and only
        # the projection head trains on it. (Its pretraining already spreads items by
        # content, so there is no warm-up or item-views loss.)
        features = item_tower.standardise(backbone_features(item_tower, ids_all, mask_all, args.feature_batch, started))

        def item_vectors(idx):
            return item_tower.head(features[idx])

    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [p for p in list(item_tower.parameters()) + list(user_tower.parameters()) if p.requires_grad] + [logit_scale]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    samples = make_samples(users, item_index, args.max_history, args.targets, rng)
    print(f"{len(items)} items, {len(users)} users, {len(samples)} training windows", flush=True)

    def item_table():
        """Every item's vector under the current item tower, without gradient."""
        with torch.no_grad():
            item_tower.eval()
            table = torch.cat([item_vectors(np.arange(i, min(i + 4096, len(items)))) for i in range(0, len(items), 4096)])
            item_tower.train()
        return table

    def item_views_loss():
        pick = torch.from_numpy(np.array(rng.sample(range(len(items)), args.batch * 2)))
        a = item_tower(views[0][0][pick], views[0][1][pick])
        b = item_tower(views[1][0][pick], views[1][1][pick])
        return F.cross_entropy(a @ b.T * 20.0, torch.arange(len(pick)))

    pretrained_items = args.item_backbone != "tiny"
    for step in range(0 if pretrained_items else args.warmup):
        loss = item_views_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.warmup - 1:
            print(f"warm-up {step:4d}  item views loss {loss.item():.4f}  {time.time() - started:.0f}s", flush=True)

    for step in range(args.steps):
        if step % args.refresh == 0:
            table = item_table()
        batch = rng.sample(samples, args.batch)
        hidx, hscen, hmask = pad_batch(batch, args.max_history)
        # History item vectors come from a table refreshed every few steps (a memory bank,
        # cheap on CPU); targets and negatives carry the gradient into the item tower.
        hv = table[torch.from_numpy(hidx)]
        queries = user_tower(hv, torch.from_numpy(hscen), torch.from_numpy(hmask))  # [B,Q,D]

        if args.assign == "hungarian" and args.queries > 1:
            loss = hungarian_loss(queries, batch, table, item_vectors, logit_scale, rng, args)
        else:
            loss = max_query_loss(queries, batch, item_vectors, logit_scale, rng, args, len(items))
        aux = torch.zeros(()) if pretrained_items else item_views_loss()
        opt.zero_grad()
        (loss + args.aux_weight * aux).backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  views {aux.item():.3f}  scale {logit_scale.exp().item():.1f}  {time.time() - started:.0f}s", flush=True)
    return tok, item_tower.eval(), user_tower.eval(), time.time() - started, len(samples), texts[:3]


# How far the serving encoder may stray from training's vectors for the manifest's check texts.
CHECK_MAX_ABS_DIFF = 1e-3


def known_vectors(tok, texts, max_tokens, item_tower):
    """The manifest's check: a few item texts and the vectors training gives them, which the
    encoder reproduces before it serves (see Encoder::load)."""
    ids, mask = tokenize(tok, texts, max_tokens)
    with torch.no_grad():
        vectors = item_tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return check_entry(texts, vectors, CHECK_MAX_ABS_DIFF)


def check_entry(texts, vectors, max_abs_diff):
    """The manifest's `check` object."""
    return {"texts": texts, "item_embedding": [[round(float(x), 7) for x in v] for v in vectors], "max_abs_diff": max_abs_diff}


def export(args, tok, item_tower, user_tower):
    os.makedirs(args.out, exist_ok=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    item_path = os.path.join(args.out, "item_tower.onnx")
    user_path = os.path.join(args.out, "user_tower.onnx")
    b, t, l = 3, 20, 17
    ids = torch.randint(2, tok.get_vocab_size(), (b, t))
    amask = torch.ones(b, t, dtype=torch.int64)
    amask[1, 12:] = 0
    hist = F.normalize(torch.randn(b, l, args.dim), dim=-1)
    scen = torch.randint(0, len(SCENARIOS), (b, l))
    hmask = torch.ones(b, l, dtype=torch.int64)
    hmask[2, 9:] = 0
    hmask[1, 7:] = 0
    with torch.no_grad():
        torch.onnx.export(
            item_tower, (ids, amask), item_path, input_names=["input_ids", "attention_mask"],
            output_names=["item_embedding"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "item_embedding": {0: "batch"}},
        )
        torch.onnx.export(
            user_tower, (hist, scen, hmask), user_path, input_names=["history", "scenario", "mask"],
            output_names=["queries"], opset_version=17, dynamo=False,
            dynamic_axes={"history": {0: "batch", 1: "events"}, "scenario": {0: "batch", 1: "events"}, "mask": {0: "batch", 1: "events"}, "queries": {0: "batch"}},
        )
        pin_output_shape(item_path, ["batch", args.dim])
        pin_output_shape(user_path, ["batch", args.queries, args.dim])
    # Checked at the traced shapes and at others, so a size baked in by tracing shows.
    item_sess, user_sess = ort.InferenceSession(item_path), ort.InferenceSession(user_path)
    parity = {"item_tower": 0.0, "user_tower": 0.0}
    for cut_b, cut_t, cut_l in [(b, t, l), (2, 13, 11)]:
        ids_c, amask_c = ids[:cut_b, :cut_t], amask[:cut_b, :cut_t]
        hist_c, scen_c, hmask_c = hist[:cut_b, :cut_l], scen[:cut_b, :cut_l], hmask[:cut_b, :cut_l]
        with torch.no_grad():
            want_item = item_tower(ids_c, amask_c).numpy()
            want_user = user_tower(hist_c, scen_c, hmask_c).numpy()
        got_item = item_sess.run(None, {"input_ids": ids_c.numpy(), "attention_mask": amask_c.numpy()})[0]
        got_user = user_sess.run(None, {"history": hist_c.numpy(), "scenario": scen_c.numpy(), "mask": hmask_c.numpy()})[0]
        parity["item_tower"] = max(parity["item_tower"], float(np.abs(got_item - want_item).max()))
        parity["user_tower"] = max(parity["user_tower"], float(np.abs(got_user - want_user).max()))
    print(f"parity (max abs diff, ONNX Runtime vs PyTorch): {parity}", flush=True)
    if max(parity.values()) >= 1e-4:
        raise SystemExit(f"parity check failed: {parity}")
    return parity


def pin_output_shape(path, dims):
    """Declares the output's static sizes (D, Q), which tracing leaves symbolic after slicing."""
    model = onnx.load(path)
    shape = model.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=3)
    p.add_argument("--max-history", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--negatives", type=int, default=384)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--warmup", type=int, default=150, help="item-tower-only steps before joint training")
    p.add_argument("--assign", choices=["max", "hungarian"], default="max",
                   help="max: one target per window scored by the best query; hungarian: targets clustered into Q groups matched to the queries")
    p.add_argument("--aux-weight", type=float, default=0.3)
    p.add_argument("--refresh", type=int, default=50, help="steps between refreshes of the history item table")
    p.add_argument("--item-backbone", choices=["tiny", "minilm", "smollm2"], default="tiny",
                   help="tiny: a small transformer trained from scratch; minilm, smollm2: frozen pretrained backbones from PyPI packages")
    p.add_argument("--user-backbone", choices=["tiny", "smollm2"], default="tiny",
                   help="tiny: a small transformer trained from scratch; smollm2: the frozen LLM read through inputs_embeds")
    p.add_argument("--item-pooling", choices=["mean", "last"], default="mean",
                   help="pretrained item backbones: mean of the token states, or the state of an appended end-of-text token")
    p.add_argument("--llm-layers", type=int, default=None, help="keep only the first N layers of the pretrained backbones")
    p.add_argument("--feature-batch", type=int, default=128, help="batch size for computing frozen item-backbone states")
    p.add_argument("--command", default="", help="the command line to record in the manifest")
    args = p.parse_args()

    tok, item_tower, user_tower, seconds, n_samples, check_texts = train(args)
    parity = export(args, tok, item_tower, user_tower)
    check = known_vectors(tok, check_texts, args.max_tokens, item_tower)
    files = {name: sha256(os.path.join(args.out, name)) for name in ["item_tower.onnx", "user_tower.onnx", "tokenizer.json"]}
    data_meta = json.load(open(os.path.join(args.data, "meta.json")))
    prefix = "reference-v0" if (args.item_backbone, args.user_backbone) == ("tiny", "tiny") else f"{args.item_backbone}-{args.user_backbone}"
    version = prefix + "-" + hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()[:12]
    manifest = {
        "model_version": version,
        "dim": args.dim,
        "max_history": args.max_history,
        "max_tokens": args.max_tokens,
        "scenarios": SCENARIOS,
        "query_names": [f"q{i}" for i in range(args.queries)],
        "mixing": {s: [1.0] * args.queries for s in SCENARIOS},
        "item_tower": {"file": "item_tower.onnx", "tokenizer": "tokenizer.json", "inputs": ["input_ids", "attention_mask"], "output": "item_embedding"},
        "user_tower": {"file": "user_tower.onnx", "inputs": ["history", "scenario", "mask"], "output": "queries"},
        "files": files,
        "training": {
            "command": args.command,
            "dataset": data_meta,
            "windows": n_samples,
            "steps": args.steps,
            "batch": args.batch,
            "negatives": args.negatives,
            "assign": args.assign,
            "backbones": {"item": args.item_backbone, "item_pooling": args.item_pooling, "user": args.user_backbone, "llm_layers": args.llm_layers},
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "parity_max_abs_diff": parity,
        },
        "check": check,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} ({version})")


if __name__ == "__main__":
    main()
