"""forge's `trm-titans-mag` language model in PyTorch, for Hugging Face transformers.

Written by `forge export STEP DIR --format hf`; `AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)` loads it. The forward pass is forge's ACT inference
(ops/src/model/trm.rs, `TrmTitansMag::infer`), operation for operation:

- a shared network of MAG blocks (RMSNorm, causal sliding-window attention with rotary
  embeddings, a Titans long-term memory updated chunk by chunk and mixed in by a sigmoid gate,
  SwiGLU), applied recursively: per recursion, `cycles` × (`n_inner` latent updates
  z ← rms(net(e + y + z))·‖e‖, then y ← rms(net(y + z))·‖e‖);
- after each recursion the logits and the halting probability σ(halt(norm(y)) + b) are read from
  the answer state; a token whose probability reaches `act_threshold` is frozen; at most
  `sup_steps` recursions.

There is no key/value cache: every generation step runs the whole prefix, as forge's own
reference forward does. Weights are stored in PyTorch's layout (`Linear.weight` is `[out, in]`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_forge import ForgeConfig


def rms(x):
    """Parameter-free RMS normalisation over the last dimension."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def l2_normalize(x):
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


class RmsNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return rms(x) * self.gain


def linear(d_in, d_out):
    return nn.Linear(d_in, d_out, bias=False)


def rope_tables(seq, head_dim, theta, device):
    half = head_dim // 2
    pos = torch.arange(seq, dtype=torch.float64, device=device)[:, None]
    freq = theta ** (-(2.0 * torch.arange(half, dtype=torch.float64, device=device)) / head_dim)
    angle = pos * freq
    return angle.cos().float(), angle.sin().float()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (linear(d, d) for _ in range(4))

    def forward(self, x, cos, sin, mask):
        b, s, d = x.shape
        h, dh = self.heads, d // self.heads

        def split(t):
            return t.reshape(b, s, h, dh).transpose(1, 2)

        q = rotate(split(self.wq(x)), cos, sin)
        k = rotate(split(self.wk(x)), cos, sin)
        v = split(self.wv(x))
        scores = q @ k.transpose(2, 3) / math.sqrt(dh) + mask
        out = torch.softmax(scores, dim=-1) @ v
        return self.wo(out.transpose(1, 2).reshape(b, s, d))


class NeuralMemory(nn.Module):
    """Titans long-term memory: `slots` × d associative matrix, written chunk by chunk with a
    momentum update of the associative loss's gradient, read before each chunk's write."""

    def __init__(self, d, slots, chunk):
        super().__init__()
        self.wk, self.wv, self.wq = linear(d, d), linear(d, d), linear(d, d)
        self.address = linear(d, slots)
        self.wo = linear(d, d)
        self.gates = linear(d, 3)
        self.gate_bias = nn.Parameter(torch.zeros(3))
        self.slots, self.chunk = slots, max(chunk, 1)

    def forward(self, h):
        b, s, d = h.shape
        a = l2_normalize(self.address(self.wk(h)))
        r = l2_normalize(self.address(self.wq(h)))
        v = self.wv(h)
        m = h.new_zeros(b, self.slots, d)
        mom = h.new_zeros(b, self.slots, d)
        reads = []
        for start in range(0, s, self.chunk):
            n = min(self.chunk, s - start)
            a_c, v_c = a[:, start : start + n], v[:, start : start + n]
            reads.append(r[:, start : start + n] @ m)
            pooled = h[:, start : start + n].mean(1, keepdim=True)
            g = torch.sigmoid(self.gates(pooled) + self.gate_bias)
            eta, theta, alpha = g[..., 0:1], g[..., 1:2], g[..., 2:3]
            err = a_c @ m - v_c
            grad = a_c.transpose(1, 2) @ err * (2.0 / n)
            mom = eta * mom - theta * grad
            m = (1.0 - alpha) * m + mom
        return self.wo(torch.cat(reads, dim=1))


class SwiGlu(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate, self.up, self.down = linear(d, hidden), linear(d, hidden), linear(hidden, d)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MagBlock(nn.Module):
    def __init__(self, config, has_memory):
        super().__init__()
        d = config.d_model
        self.norm_attn = RmsNorm(d)
        self.attn = CausalAttention(d, config.heads)
        if has_memory:
            self.memory = NeuralMemory(d, config.ltm_slots, config.mem_chunk)
            self.gate = linear(d, d)
            self.gate_bias = nn.Parameter(torch.zeros(d))
        else:
            self.memory = None
        self.norm_ffn = RmsNorm(d)
        self.ffn = SwiGlu(d, config.d_ff)

    def forward(self, x, cos, sin, mask):
        h = self.norm_attn(x)
        att = self.attn(h, cos, sin, mask)
        if self.memory is not None:
            m = self.memory(h)
            g = torch.sigmoid(self.gate(h) + self.gate_bias)
            att = g * att + (1.0 - g) * m
        x = x + att
        return x + self.ffn(self.norm_ffn(x))


class ForgeTrmTitansMagForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ForgeConfig
    base_model_prefix = "forge"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        self.embed = nn.Parameter(torch.zeros(config.vocab_size, d))
        self.y_init = nn.Parameter(torch.zeros(d), requires_grad=False)
        self.z_init = nn.Parameter(torch.zeros(d), requires_grad=False)
        self.blocks = nn.ModuleList(
            MagBlock(config, l in config.memory_layers) for l in range(config.layers)
        )
        self.norm_out = RmsNorm(d)
        self.head = None if config.tie_embeddings else linear(d, config.vocab_size)
        self.halt = linear(d, 1)
        self.halt_bias = nn.Parameter(torch.zeros(1))
        self.post_init()

    def _init_weights(self, module):
        # Every weight comes from the exported file.
        pass

    def get_input_embeddings(self):
        return None

    def _tables(self, s, device):
        c = self.config
        cos, sin = rope_tables(s, c.d_model // c.heads, c.rope_theta, device)
        i = torch.arange(s, device=device)[:, None]
        j = torch.arange(s, device=device)[None, :]
        blocked = (j > i) | (i - j >= c.window)
        mask = torch.zeros(s, s, device=device).masked_fill(blocked, -1e9)
        return cos, sin, mask

    def _net(self, x, tables):
        for block in self.blocks:
            x = block(x, *tables)
        return x

    def _readout(self, y):
        h = self.norm_out(y)
        logits = self.head(h) if self.head is not None else h @ self.embed.t()
        q = torch.sigmoid(self.halt(h) + self.halt_bias)
        return logits, q

    def forward(self, input_ids, attention_mask=None, labels=None, return_dict=True, **kwargs):
        c = self.config
        b, s = input_ids.shape
        tables = self._tables(s, input_ids.device)
        e = self.embed[input_ids]
        scale = torch.sqrt(e.pow(2).mean(-1, keepdim=True) + 1e-12)
        y = self.y_init.expand(b, s, -1)
        z = self.z_init.expand(b, s, -1)
        halted = torch.zeros(b, s, 1, dtype=torch.bool, device=input_ids.device)
        logits = None
        for _ in range(max(c.sup_steps, 1)):
            y_new, z_new = y, z
            for _ in range(c.cycles):
                for _ in range(c.n_inner):
                    z_new = rms(self._net(e + y_new + z_new, tables)) * scale
                y_new = rms(self._net(y_new + z_new, tables)) * scale
            y = torch.where(halted, y, y_new)
            z = torch.where(halted, z, z_new)
            logits, q = self._readout(y)
            halted = halted | (q >= c.act_threshold)
            if bool(halted.all()):
                break
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        # No cache: every step reads the whole prefix.
        return {"input_ids": input_ids}
