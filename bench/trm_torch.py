"""PyTorch implementation of forge's `trm-titans-mag` train step, written for the benchmark.

Same architecture as ops/src/model (causal sliding-window attention with RoPE, Titans memory in
its chunked form with the analytic associative-loss gradient, MAG gate, SwiGLU, RMSNorm, TRM
recursion with deep supervision and the ACT BCE head, tied embeddings) and the same optimizer as
ops/src/optim (global-norm clipping, Grokfast EMA, Muon with Newton-Schulz on 2-D block weights,
AdamW elsewhere). One step = forward_train + backward + optimizer step, as `train_step` times
in ops/benches/train_step.rs.

    python3 bench/trm_torch.py --preset tiny --batch 8 --seq 128 --steps 10 --threads 2

Prints one JSON line: {"impl": "pytorch", "tokens_per_second": ..., ...}. With --compile,
`model.forward_train` runs through torch.compile (inductor; on CPU it needs a C++ compiler) and
the line says "pytorch-compile"; the warm-up steps, which compile, are in "warmup_seconds" and
not in the timing.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {
    "tiny": dict(vocab=4096, d=128, layers=3, heads=4, d_ff=384, window=128, max_seq=256,
                 memory_layers=[1], slots=64, chunk=16),
    "25m": dict(vocab=8192, d=512, layers=8, heads=8, d_ff=768, window=256, max_seq=512,
                memory_layers=[3, 7], slots=512, chunk=32),
}
COMMON = dict(n_inner=1, cycles=2, sup_steps=2, act_weight=0.1, gates=(0.9, 0.1, 0.05))


def dense(d_in, d_out, std):
    # forge stores dense weights as [in, out] and computes x @ W.
    return nn.Parameter(torch.randn(d_in, d_out) * std)


class RmsNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain


class Rope:
    def __init__(self, seq, head_dim, theta=10000.0):
        half = head_dim // 2
        freq = theta ** (-(2.0 * torch.arange(half, dtype=torch.float64)) / head_dim)
        ang = torch.arange(seq, dtype=torch.float64)[:, None] * freq[None, :]
        self.cos = ang.cos().float()[None, None]
        self.sin = ang.sin().float()[None, None]

    def apply(self, x):
        s, half = x.shape[2], x.shape[3] // 2
        cos, sin = self.cos[:, :, :s], self.sin[:, :, :s]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=3)


def causal_window_bias(seq, window):
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    bad = (j > i) | (i - j >= window)
    return torch.where(bad, torch.tensor(-1e9), torch.tensor(0.0))[None, None]


class Attention(nn.Module):
    def __init__(self, d, heads, out_std):
        super().__init__()
        self.h = heads
        self.wq, self.wk, self.wv = (dense(d, d, 0.02) for _ in range(3))
        self.wo = dense(d, d, out_std)

    def forward(self, x, rope, bias):
        b, s, d = x.shape
        dh = d // self.h
        split = lambda t: t.reshape(b, s, self.h, dh).transpose(1, 2)
        q = rope.apply(split(x @ self.wq))
        k = rope.apply(split(x @ self.wk))
        v = split(x @ self.wv)
        scores = q @ k.transpose(2, 3) / math.sqrt(dh) + bias[:, :, :s, :s]
        max_logit = scores.detach().amax(dim=(0, 2, 3))
        out = (torch.softmax(scores, dim=3) @ v).transpose(1, 2).reshape(b, s, d)
        return out @ self.wo, max_logit


def l2n(x):
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


class Memory(nn.Module):
    def __init__(self, d, slots, chunk, gate_bias, out_std):
        super().__init__()
        self.wk, self.wv, self.wq = (dense(d, d, 0.02) for _ in range(3))
        self.address = dense(d, slots, 0.02)
        self.wo = dense(d, d, out_std)
        self.gates = dense(d, 3, 0.02)
        self.gate_bias = nn.Parameter(torch.tensor(gate_bias))
        self.chunk, self.slots = chunk, slots

    def forward(self, h):
        b, s, d = h.shape
        a = l2n((h @ self.wk) @ self.address)
        r = l2n((h @ self.wq) @ self.address)
        v = h @ self.wv
        m = h.new_zeros(b, self.slots, d)
        mom = h.new_zeros(b, self.slots, d)
        reads = []
        for start in range(0, s, self.chunk):
            end = min(s, start + self.chunk)
            a_c, v_c = a[:, start:end], v[:, start:end]
            reads.append(r[:, start:end] @ m)
            g = torch.sigmoid(h[:, start:end].mean(1, keepdim=True) @ self.gates + self.gate_bias)
            eta, theta, alpha = g[..., 0:1], g[..., 1:2], g[..., 2:3]
            grad = a_c.transpose(1, 2) @ (a_c @ m - v_c) * (2.0 / (end - start))
            mom = eta * mom - theta * grad
            m = (1 - alpha) * m + mom
        return torch.cat(reads, 1) @ self.wo


class Block(nn.Module):
    def __init__(self, d, heads, d_ff, memory, out_std):
        super().__init__()
        self.norm_attn = RmsNorm(d)
        self.attn = Attention(d, heads, out_std)
        self.memory = Memory(d, *memory, out_std) if memory else None
        if memory:
            self.gate = dense(d, d, 0.02)
            self.gate_bias = nn.Parameter(torch.zeros(d))
        self.norm_ffn = RmsNorm(d)
        self.w_gate, self.w_up = dense(d, d_ff, 0.02), dense(d, d_ff, 0.02)
        self.w_down = dense(d_ff, d, out_std)

    def forward(self, x, rope, bias):
        h = self.norm_attn(x)
        att, max_logit = self.attn(h, rope, bias)
        if self.memory is not None:
            g = torch.sigmoid(h @ self.gate + self.gate_bias)
            att = g * att + (1 - g) * self.memory(h)
        x = x + att
        f = self.norm_ffn(x)
        return x + (F.silu(f @ self.w_gate) * (f @ self.w_up)) @ self.w_down, max_logit


class TrmTitansMag(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d"]
        out_std = 0.02 / math.sqrt(2 * c["layers"])
        logit = lambda p: math.log(p / (1 - p))
        gates = [logit(p) for p in COMMON["gates"]]
        self.embed = nn.Parameter(torch.randn(c["vocab"], d) * 0.02)
        # Fixed random initial states (TRM's H_init/L_init buffers), never trained, as in forge.
        self.register_buffer("y_init", torch.randn(d) * 0.02)
        self.register_buffer("z_init", torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, c["heads"], c["d_ff"],
                  (c["slots"], c["chunk"], gates) if l in c["memory_layers"] else None, out_std)
            for l in range(c["layers"]))
        self.norm_out = RmsNorm(d)
        self.halt = dense(d, 1, 0.02)
        self.halt_bias = nn.Parameter(torch.tensor([-2.0]))
        self.rope = Rope(c["max_seq"], d // c["heads"])
        self.bias = causal_window_bias(c["max_seq"], c["window"])

    def net(self, x):
        logits = []
        for blk in self.blocks:
            x, ml = blk(x, self.rope, self.bias)
            logits.append(ml)
        return x, logits

    def recurse(self, e, y, z):
        # Post-norm: every pass's output is RMS-normalised and scaled to the embedding's RMS.
        scale = e.pow(2).mean(2, keepdim=True).add(1e-12).sqrt()
        post = lambda x: x / x.pow(2).mean(2, keepdim=True).add(1e-6).sqrt() * scale
        max_logits = []
        for c in range(COMMON["cycles"]):
            last = c + 1 == COMMON["cycles"]
            with torch.set_grad_enabled(last and torch.is_grad_enabled()):
                for _ in range(COMMON["n_inner"]):
                    z = post(self.net(e + y + z)[0])
                y, max_logits = self.net(y + z)
                y = post(y)
        return y, z, max_logits

    def forward_train(self, x, targets):
        b, s = x.shape
        e = self.embed[x]
        y = self.y_init.expand(b, s, -1)
        z = self.z_init.expand(b, s, -1)
        weight = (targets != 0).float()
        n_real = weight.sum() + 1e-9
        total = 0.0
        for step in range(COMMON["sup_steps"]):
            y, z, max_logits = self.recurse(e, y, z)
            h = self.norm_out(y)
            logits = h @ self.embed.t()
            q = torch.sigmoid(h @ self.halt + self.halt_bias).reshape(b, s).clamp(1e-6, 1 - 1e-6)
            logp = F.log_softmax(logits, dim=2)
            ce = -(logp.gather(2, targets[..., None])[..., 0] * weight).sum() / n_real
            correct = (logits.detach().argmax(2) == targets).float()
            bce = -(correct * q.log() + (1 - correct) * (1 - q).log())
            bce = (bce * weight).sum() / n_real
            total = total + ce + COMMON["act_weight"] * bce
            if step + 1 < COMMON["sup_steps"]:
                y, z = y.detach(), z.detach()
        return total / COMMON["sup_steps"], max_logits


NS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g):
    a, b, c = NS
    transposed = g.shape[0] > g.shape[1]
    x = g.t() if transposed else g
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        m = x @ x.t()
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.t() if transposed else x


class MuonGrokfast:
    """ops/src/optim/muon_grokfast.rs, phase1 preset values."""

    def __init__(self, named, lr=1e-3, muon_lr=0.02, momentum=0.95, betas=(0.9, 0.95),
                 eps=1e-8, wd=0.01, alpha=0.98, lam=0.3, clip=1.0):
        self.named = list(named)
        self.lr, self.muon_lr, self.momentum, self.betas = lr, muon_lr, momentum, betas
        self.eps, self.wd, self.alpha, self.lam, self.clip = eps, wd, alpha, lam, clip
        self.state = {}
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        # Parameters used only in no-grad cycles (y_init, z_init) get no gradient, as in forge.
        live = [(n, p) for n, p in self.named if p.grad is not None]
        norm = torch.sqrt(sum((p.grad ** 2).sum() for _, p in live)).item()
        scale = self.clip / norm if self.clip > 0 and norm > self.clip else 1.0
        for name, p in live:
            g = p.grad * scale
            st = self.state.setdefault(name, {})
            mu = st.get("mu", g)
            mu = self.alpha * mu + (1 - self.alpha) * g
            st["mu"] = mu
            g = g + self.lam * mu
            decay = self.wd if p.dim() >= 2 else 0.0
            if p.dim() == 2 and name.startswith("blocks.") and min(p.shape) > 3:
                m = st.get("m", torch.zeros_like(g))
                m = self.momentum * m + (1 - self.momentum) * g
                st["m"] = m
                u = (1 - self.momentum) * g + self.momentum * m
                # [in, out] layout: √max(1, fan_out/fan_in), KellerJordan/Muon's rows/cols.
                u = newton_schulz5(u) * math.sqrt(max(1.0, p.shape[1] / p.shape[0]))
                p.mul_(1 - self.muon_lr * decay).sub_(self.muon_lr * u)
            else:
                b1, b2 = self.betas
                m = b1 * st.get("m", torch.zeros_like(g)) + (1 - b1) * g
                v = b2 * st.get("v", torch.zeros_like(g)) + (1 - b2) * g * g
                st["m"], st["v"] = m, v
                upd = (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)
                p.mul_(1 - self.lr * decay).sub_(self.lr * upd)
            p.grad = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true",
                    help="run torch.compile(model.forward_train) (inductor); the warm-up steps, "
                         "which compile it, are reported as compile_seconds, not timed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cfg = PRESETS[a.preset]
    model = TrmTitansMag(cfg)
    model.rope.cos, model.rope.sin = model.rope.cos.to(dev), model.rope.sin.to(dev)
    model.bias = model.bias.to(dev)
    model.to(dev)
    opt = MuonGrokfast(model.named_parameters())
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    times, phases = [], [0.0, 0.0, 0.0]
    forward_train = torch.compile(model.forward_train) if a.compile else model.forward_train
    started, warm_seconds = time.perf_counter(), 0.0

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for step in range(a.warmup + a.steps):
        rows = torch.randint(3, cfg["vocab"], (a.batch, a.seq + 1), generator=gen).to(dev)
        sync()
        t = time.perf_counter()
        loss, _ = forward_train(rows[:, :-1], rows[:, 1:])
        sync()
        t_fwd = time.perf_counter()
        loss.backward()
        sync()
        t_bwd = time.perf_counter()
        opt.step()
        loss_v = loss.item()
        if step + 1 == a.warmup:
            warm_seconds = time.perf_counter() - started
        if step >= a.warmup:
            end = time.perf_counter()
            times.append(end - t)
            for i, d in enumerate((t_fwd - t, t_bwd - t_fwd, end - t_bwd)):
                phases[i] += d / a.steps
    mean = sum(times) / len(times)
    print(json.dumps({
        "impl": "pytorch-compile" if a.compile else "pytorch", "torch": torch.__version__, "preset": a.preset, "params": n_params,
        "batch": a.batch, "seq": a.seq, "threads": a.threads, "steps": a.steps,
        "step_seconds": mean, "tokens_per_second": a.batch * a.seq / mean, "last_loss": loss_v,
        "forward_seconds": phases[0], "backward_seconds": phases[1], "optimizer_seconds": phases[2],
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "warmup_seconds": warm_seconds,
    }))


if __name__ == "__main__":
    main()
