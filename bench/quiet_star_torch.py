"""PyTorch implementation of forge's Quiet-STaR training step, written for the benchmark.

The same step as `QuietStar::step` in ops/src/train/quiet_star.rs, on the model of
bench/trm_torch.py (forge's `trm-titans-mag`) with a mixing head:

- the text is read once by incremental ACT inference (every one of `sup_steps` recursions of
  `cycles x (n_inner + 1)` passes runs for every token, halted tokens frozen), keeping every
  pass's attention keys and values and the Titans memory state each chunk starts from;
- `num_thoughts` thoughts of `thought_length` tokens are sampled after every position, one
  batched pass per thought token: the start token, the sampled tokens, the end token, then the
  `n_true - 1` true tokens fed after it. A thought token of position j at step t sits at rotary
  position j + 1 + t, attends to the text <= j and to its own thought's earlier tokens only (the
  diagonal mask), and reads the memory state position j read, never writing it;
- the mixing head weighs the states before and after the thought; the mixed prediction's NLL of
  the next `n_true` tokens, REINFORCE with rewards relative to the other thoughts (thresholded),
  and the KL to a frozen reference read the same way make the loss;
- backward and Muon x Grokfast (`phase3-rl`: lr 5e-4, lambda 0.1).

Throughput counts text tokens only, so the thoughts' cost is in it, as in
ops/benches/quiet_star_step.rs.

    python3 bench/quiet_star_torch.py --preset tiny --batch 4 --seq 64 --steps 3 --threads 2

Prints one JSON line: {"impl": "pytorch", "text_tokens_per_second": ..., ...}.
"""

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from trm_torch import COMMON, PRESETS, MuonGrokfast, TrmTitansMag, dense, l2n

START, END = 3, 4
ACT_THRESHOLD = 0.95


class MixingHead(nn.Module):
    """ops/src/model/mixing.rs: w = sigmoid(out(relu(hidden([before; after]))) + bias)."""

    def __init__(self, d):
        super().__init__()
        self.hidden = dense(2 * d, d, 0.02)
        self.out = dense(d, 1, 0.02)
        self.bias = nn.Parameter(torch.tensor([math.log(0.1 / 0.9)]))

    def mix(self, before, after):
        h = F.relu(torch.cat([before, after], 2) @ self.hidden)
        w = torch.sigmoid(h @ self.out + self.bias)
        return (1 - w) * before + w * after, w


def logits_of(model, y):
    return model.norm_out(y) @ model.embed.t()


def recurse(model, cache, tokens):
    """ops/src/model/decode.rs `recurse`: ACT inference of new tokens against `cache`."""
    b, n = tokens.shape
    e = model.embed[tokens]
    scale = e.pow(2).mean(2, keepdim=True).add(1e-12).sqrt()
    post = lambda x: x / x.pow(2).mean(2, keepdim=True).add(1e-6).sqrt() * scale
    y = model.y_init.expand(b, n, -1)
    z = model.z_init.expand(b, n, -1)
    halted = torch.zeros(b, n, 1, dtype=torch.bool, device=tokens.device)
    slot = 0

    def net(x):
        nonlocal slot
        for blk in model.blocks:
            x = block_pass(cache, blk, slot, x)
            slot += 1
        return x

    for _ in range(COMMON["sup_steps"]):
        yn, zn = y, z
        for _ in range(COMMON["cycles"]):
            for _ in range(COMMON["n_inner"]):
                zn = post(net(e + yn + zn))
            yn = post(net(yn + zn))
        y = torch.where(halted, y, yn)
        z = torch.where(halted, z, zn)
        q = torch.sigmoid(model.norm_out(y) @ model.halt + model.halt_bias)
        halted = halted | (q.detach() >= ACT_THRESHOLD)
    return y


def block_pass(cache, blk, slot, x):
    h = blk.norm_attn(x)
    att = cache.attention(blk.attn, slot, h)
    if blk.memory is not None:
        g = torch.sigmoid(h @ blk.gate + blk.gate_bias)
        att = g * att + (1 - g) * cache.memory(blk.memory, slot, h)
    x = x + att
    f = blk.norm_ffn(x)
    return x + (F.silu(f @ blk.w_gate) * (f @ blk.w_up)) @ blk.w_down


def split(t, heads):
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2)


def rope_at(rope, x, pos):
    """Rotary embedding at explicit positions `pos` ([n] or [b, n])."""
    half = x.shape[3] // 2
    cos = rope.cos[0, 0][pos]
    sin = rope.sin[0, 0][pos]
    if cos.dim() == 2:
        cos, sin = cos[None, None], sin[None, None]
    else:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=3)


class TextCache:
    """The text read at once: every pass's keys and values, and the memory state each chunk
    starts from (forge's `Decoder::extend` of the whole text with `record_memory`)."""

    def __init__(self, model, s, window, device):
        self.model, self.s, self.device = model, s, device
        i = torch.arange(s, device=device)[:, None]
        j = torch.arange(s, device=device)[None, :]
        bad = (j > i) | (i - j >= window)
        self.mask = torch.where(bad, -1e9, 0.0)[None, None]
        self.pos = torch.arange(s, device=device)
        self.kv, self.chunk_starts = {}, {}

    def attention(self, attn, slot, x):
        b, n, d = x.shape
        rope = self.model.rope
        q = rope_at(rope, split(x @ attn.wq, attn.h), self.pos)
        k = rope_at(rope, split(x @ attn.wk, attn.h), self.pos)
        v = split(x @ attn.wv, attn.h)
        self.kv[slot] = (k, v)
        scores = q @ k.transpose(2, 3) / math.sqrt(d // attn.h) + self.mask
        return (torch.softmax(scores, 3) @ v).transpose(1, 2).reshape(b, n, d) @ attn.wo

    def memory(self, mem, slot, h):
        b, s, d = h.shape
        a = l2n((h @ mem.wk) @ mem.address)
        r = l2n((h @ mem.wq) @ mem.address)
        v = h @ mem.wv
        m = h.new_zeros(b, mem.slots, d)
        mom = h.new_zeros(b, mem.slots, d)
        reads, starts = [], []
        for start in range(0, s, mem.chunk):
            end = min(s, start + mem.chunk)
            starts.append(m)
            a_c, v_c = a[:, start:end], v[:, start:end]
            reads.append(r[:, start:end] @ m)
            g = torch.sigmoid(h[:, start:end].mean(1, keepdim=True) @ mem.gates + mem.gate_bias)
            eta, theta, alpha = g[..., 0:1], g[..., 1:2], g[..., 2:3]
            grad = a_c.transpose(1, 2) @ (a_c @ m - v_c) * (2.0 / (end - start))
            mom = eta * mom - theta * grad
            m = (1 - alpha) * m + mom
        self.chunk_starts[slot] = torch.stack(starts, 1)  # [b, chunks, slots, d]
        return torch.cat(reads, 1) @ mem.wo


class ThoughtCache:
    """forge's `Thoughts`: one token appended to every position's thought per step."""

    def __init__(self, text, window):
        self.text, self.window, self.t = text, window, 0
        self.kv = {}

    def step(self, tokens):
        s, t, dev = self.text.s, self.t, self.text.device
        j = torch.arange(s, device=dev)
        self.pos = j + 1 + t
        # Text keys j' <= j within the window of position j + 1 + t; own thought's tokens 0..=t.
        jt = torch.arange(s, device=dev)[None, :]
        text_ok = (jt <= j[:, None]) & (self.pos[:, None] - jt < self.window)
        own = torch.zeros(s, (t + 1) * s, dtype=torch.bool, device=dev)
        for tt in range(t + 1):
            if t - tt < self.window:
                own[j, tt * s + j] = True
        ok = torch.cat([text_ok, own], 1)
        self.mask = torch.where(ok, 0.0, -1e9)[None, None]
        y = recurse(self.text.model, self, tokens)
        self.t += 1
        return y

    def attention(self, attn, slot, x):
        b, m, d = x.shape
        rope = self.text.model.rope
        q = rope_at(rope, split(x @ attn.wq, attn.h), self.pos)
        k = rope_at(rope, split(x @ attn.wk, attn.h), self.pos)
        v = split(x @ attn.wv, attn.h)
        if slot in self.kv:
            k = torch.cat([self.kv[slot][0], k], 2)
            v = torch.cat([self.kv[slot][1], v], 2)
        self.kv[slot] = (k, v)
        tk, tv = self.text.kv[slot]
        keys, values = torch.cat([tk, k], 2), torch.cat([tv, v], 2)
        scores = q @ keys.transpose(2, 3) / math.sqrt(d // attn.h) + self.mask
        return (torch.softmax(scores, 3) @ values).transpose(1, 2).reshape(b, m, d) @ attn.wo

    def memory(self, mem, slot, h):
        b, m, d = h.shape
        chunks = torch.arange(m, device=h.device) // mem.chunk
        states = self.text.chunk_starts[slot][:, chunks]  # [b, m, slots, d]
        r = l2n((h @ mem.wq) @ mem.address)
        return (r[:, :, None, :] @ states)[:, :, 0] @ mem.wo


def shifted(x, k):
    if k == 0:
        return x
    return torch.cat([x[:, k:], torch.zeros_like(x[:, :k])], 1)


def quiet_star_loss(model, head, reference, rows, st, window, gen):
    b, s = rows.shape[0], rows.shape[1] - 1
    dev = rows.device
    x = rows[:, :s]
    text = TextCache(model, s, window, dev)
    before = recurse(model, text, x)
    base_logp = F.log_softmax(logits_of(model, before), 2)
    targets = []
    for k in range(min(st["n_true"], s)):
        labels = torch.zeros_like(x)
        labels[:, : s - k] = rows[:, 1 + k : s + 1]
        valid = (labels != 0).float()
        base = (shifted(base_logp.detach(), k).gather(2, labels[..., None])[..., 0] * valid).sum()
        targets.append((labels, valid, base.item(), valid.sum().item()))
    mask = targets[0][1]
    lls, log_ps = [], []
    scored = 0.0
    for _ in range(st["num_thoughts"]):
        th = ThoughtCache(text, window)
        y = th.step(torch.full_like(x, START))
        log_p = torch.zeros(b, s, device=dev)
        for _ in range(st["thought_length"]):
            logits = logits_of(model, y)
            probs = torch.softmax(logits.detach() / st["temperature"], 2).reshape(b * s, -1)
            nxt = torch.multinomial(probs, 1, generator=gen).reshape(b, s)
            log_p = log_p + F.log_softmax(logits, 2).gather(2, nxt[..., None])[..., 0]
            y = th.step(nxt)
        y = th.step(torch.full_like(x, END))
        ll = torch.zeros(b, s, device=dev)
        for k, (labels, valid, base, count) in enumerate(targets):
            mixed, w = head.mix(shifted(before, k), y)
            mixed_logp = F.log_softmax(logits_of(model, mixed), 2)
            ll = ll + mixed_logp.gather(2, labels[..., None])[..., 0] * valid
            scored += count
            if k + 1 < len(targets):
                y = th.step(labels)
        lls.append(ll)
        log_ps.append(log_p)
    total = sum(l.detach() for l in lls)
    n = len(lls)
    rewards = [l.detach() - (total - l.detach()) / (n - 1) for l in lls]
    thr = st["reward_threshold"]
    rewards = [r * ((r > thr).float() + (r <= 0).float()) for r in rewards]
    count = mask.sum() + 1e-9
    reinforce = -sum((lp * r * mask).sum() for lp, r in zip(log_ps, rewards)) / count
    nll = -sum(l.sum() for l in lls) / max(scored, 1.0)
    with torch.no_grad():
        ref = recurse(reference, TextCache(reference, s, window, dev), x)
        ref_logp = F.log_softmax(logits_of(reference, ref), 2)
    kl = ((ref_logp.exp() * (ref_logp - base_logp)).sum(2) * mask).sum() / count
    return nll + reinforce + st["kl_coef"] * kl, nll


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-thoughts", type=int, default=2)
    ap.add_argument("--thought-length", type=int, default=12)
    ap.add_argument("--n-true", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cfg = PRESETS[a.preset]
    model = TrmTitansMag(cfg)
    model.rope.cos, model.rope.sin = model.rope.cos.to(dev), model.rope.sin.to(dev)
    model.to(dev)
    head = MixingHead(cfg["d"]).to(dev)
    reference = copy.deepcopy(model).requires_grad_(False)
    st = dict(num_thoughts=a.num_thoughts, thought_length=a.thought_length, n_true=a.n_true,
              temperature=1.0, reward_threshold=0.05, kl_coef=0.1)
    assert a.seq + a.thought_length + 1 + a.n_true <= cfg["max_seq"], "seq + thought span > max_seq"
    named = list(model.named_parameters()) + [("talk." + n, p) for n, p in head.named_parameters()]
    opt = MuonGrokfast(named, lr=5e-4, lam=0.1)
    n_params = sum(p.numel() for _, p in named)
    gen = torch.Generator(device=dev).manual_seed(1)
    rows_gen = torch.Generator().manual_seed(1)
    times = []

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for step in range(a.warmup + a.steps):
        rows = torch.randint(15, cfg["vocab"], (a.batch, a.seq + 1), generator=rows_gen).to(dev)
        sync()
        t = time.perf_counter()
        loss, nll = quiet_star_loss(model, head, reference, rows, st, cfg["window"], gen)
        loss.backward()
        opt.step()
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "preset": a.preset, "params": n_params,
        "batch": a.batch, "seq": a.seq, "num_thoughts": a.num_thoughts,
        "thought_length": a.thought_length, "n_true": a.n_true, "threads": a.threads,
        "steps": a.steps, "step_seconds": mean, "text_tokens_per_second": a.batch * a.seq / mean,
        "last_loss": nll.item(),
    }))


if __name__ == "__main__":
    main()
