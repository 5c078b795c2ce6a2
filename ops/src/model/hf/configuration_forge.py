"""Configuration of forge's `trm-titans-mag` models in Hugging Face transformers.

Written by `forge export STEP DIR --format hf` next to `config.json`; loaded through `auto_map`
with `trust_remote_code=True`. The fields are forge's `ModelConfig` (ops/src/model/config.rs),
flat, with the usual transformers aliases (`hidden_size`, `num_hidden_layers`, …).
"""

from transformers import PretrainedConfig


class ForgeConfig(PretrainedConfig):
    model_type = "forge-trm-titans-mag"

    def __init__(
        self,
        vocab_size=4096,
        d_model=128,
        layers=3,
        heads=4,
        d_ff=384,
        window=128,
        max_seq=256,
        rope_theta=10000.0,
        memory_layers=(1,),
        ltm_slots=64,
        mem_chunk=16,
        n_inner=1,
        cycles=2,
        sup_steps=2,
        act_threshold=0.95,
        tie_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.layers = layers
        self.heads = heads
        self.d_ff = d_ff
        self.window = window
        self.max_seq = max_seq
        self.rope_theta = rope_theta
        self.memory_layers = list(memory_layers)
        self.ltm_slots = ltm_slots
        self.mem_chunk = mem_chunk
        self.n_inner = n_inner
        self.cycles = cycles
        self.sup_steps = sup_steps
        self.act_threshold = act_threshold
        self.tie_embeddings = tie_embeddings
        # The names other tools look for.
        self.hidden_size = d_model
        self.num_hidden_layers = layers
        self.num_attention_heads = heads
        self.intermediate_size = d_ff
        self.max_position_embeddings = max_seq
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
