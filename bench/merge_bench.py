"""forge vs mergekit on the same files: linear, slerp and ties merges of two ~25M-parameter
Llama-architecture checkpoints (plus a base for ties), generated here with fixed seeds.

For each method and tool: wall time and peak RSS of the merging process (os.wait4), best of
REPS runs, and the largest absolute difference between the two tools' outputs (a check that
forge implements mergekit's semantics). Prints one JSON line per measurement and a markdown table.

    python bench/merge_bench.py FORGE_BENCH_BIN WORK_DIR [REPS]

A child's peak RSS includes what it inherited from the process that forked it, so the models are
generated and the outputs compared in separate processes (numpy is imported only there), and the
measuring process stays small; its floor is reported (the peak RSS of `true` spawned the same way).
"""
import json
import os
import resource
import subprocess
import sys
import time

FORGE, WORK = sys.argv[1], sys.argv[2]
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
MERGEKIT = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
PHASE = sys.argv[4] if len(sys.argv) > 4 else "main"

# Llama geometry: 6144 vocab, d 512, 6 layers, 8 heads, SwiGLU 1408 → 25.5M parameters.
V, D, L, F = 6144, 512, 6, 1408
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
    "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": 8,
    "num_key_value_heads": 8, "vocab_size": V, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32",
    "hidden_act": "silu", "rope_theta": 10000.0,
}


def shapes():
    s = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[p + f"self_attn.{n}.weight"] = (D, D)
        s[p + "mlp.gate_proj.weight"] = (F, D)
        s[p + "mlp.up_proj.weight"] = (F, D)
        s[p + "mlp.down_proj.weight"] = (D, F)
        s[p + "input_layernorm.weight"] = (D,)
        s[p + "post_attention_layernorm.weight"] = (D,)
    return s


def make(name, seed, base=None):
    import numpy as np
    from safetensors.numpy import save_file

    d = os.path.join(WORK, name)
    f = os.path.join(d, "model.safetensors")
    if os.path.exists(f):
        return d
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = {}
    for k, shape in shapes().items():
        if base is None:
            t[k] = (np.ones(shape) if k.endswith("norm.weight") else rng.normal(0, 0.02, shape)).astype(np.float32)
        else:  # a "fine-tune": the base plus a task vector
            t[k] = (base[k] + rng.normal(0, 0.004, shape)).astype(np.float32)
    save_file(t, f, metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(CONFIG, fh)
    return d


def run(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    err = p.stderr.read().decode()
    if status != 0:
        sys.exit(f"{cmd[0]} failed: {err[-2000:]}")
    return secs, ru.ru_maxrss * 1024  # Linux: KiB


def generate():
    from safetensors.numpy import load_file

    base_dir = make("base", 1)
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    make("a", 2, base), make("b", 3, base)


def compare(out_f, out_m):
    """Largest absolute difference between forge's and mergekit's outputs, and the tensor names
    only one of them has (JSON on stdout)."""
    import numpy as np
    from safetensors.numpy import load_file

    mine = load_file(out_f)
    theirs = {}
    for f in sorted(os.listdir(out_m)):
        if f.endswith(".safetensors"):
            theirs.update(load_file(os.path.join(out_m, f)))
    diff = max(float(np.max(np.abs(mine[k] - theirs[k]))) for k in theirs)
    print(json.dumps({"diff": diff, "missing": sorted(set(theirs) ^ set(mine))}))


def in_child(*args):
    """Run a phase of this script in a fresh interpreter; its stdout."""
    return subprocess.run([sys.executable, __file__, FORGE, WORK, str(REPS), *args],
                          check=True, stdout=subprocess.PIPE, text=True).stdout


def main():
    os.makedirs(WORK, exist_ok=True)
    in_child("generate")
    base_dir, a, b = (os.path.join(WORK, n) for n in ("base", "a", "b"))
    nparams = sum(v[0] * (v[1] if len(v) > 1 else 1) for v in shapes().values())
    floor = min(run(["true"])[1] for _ in range(3))
    input_bytes = sum(os.path.getsize(os.path.join(x, "model.safetensors")) for x in (a, b))
    configs = {
        "linear": f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                  f"  - model: {b}\n    parameters: {{weight: 1.0}}\nparameters: {{normalize: true}}\ndtype: float32\n",
        "slerp": f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                 f"parameters: {{t: 0.5}}\ndtype: float32\n",
        "ties": f"merge_method: ties\nbase_model: {base_dir}\nmodels:\n"
                f"  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                f"  - model: {b}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                f"parameters: {{normalize: true}}\ndtype: float32\n",
    }
    rows = []
    for method, cfg in configs.items():
        cfg_path = os.path.join(WORK, f"{method}.yml")
        with open(cfg_path, "w") as fh:
            fh.write(cfg)
        out_f = os.path.join(WORK, f"out-forge-{method}.safetensors")
        out_m = os.path.join(WORK, f"out-mergekit-{method}")
        forge_cmd = [FORGE, method, out_f, os.path.join(a, "model.safetensors"), os.path.join(b, "model.safetensors")]
        if method == "ties":
            forge_cmd.append(os.path.join(base_dir, "model.safetensors"))
        mk_cmd = [MERGEKIT, cfg_path, out_m, "--no-copy-tokenizer", "--allow-crimes", "--out-shard-size", "1B"]
        res = {}
        for tool, cmd in (("forge", forge_cmd), ("mergekit", mk_cmd)):
            best = min((run(cmd) for _ in range(REPS)), key=lambda r: r[0])
            res[tool] = best
            print(json.dumps({"tool": tool, "method": method, "seconds": round(best[0], 3),
                              "peak_rss_mib": round(best[1] / 2**20, 1)}), flush=True)
        rows.append((method, res, out_f, out_m))
    # Same numbers? Compare every tensor (after all timing, in another process).
    rows = [(m, res, json.loads(in_child("compare", f, o))) for m, res, f, o in rows]
    print()
    print(f"Inputs: two {nparams / 1e6:.1f}M-parameter F32 Llama checkpoints "
          f"({input_bytes / 2**20:.0f} MiB together; ties also reads the base), {REPS} runs each, best shown; "
          f"peak RSS floor of a process spawned by this driver: {floor / 2**20:.0f} MiB.")
    print()
    print("| method | forge s | mergekit s | speed-up | forge peak RSS MiB | mergekit peak RSS MiB | forge RSS / inputs | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for method, res, cmp in rows:
        diff, missing = cmp["diff"], cmp["missing"]
        (fs, fr), (ms, mr) = res["forge"], res["mergekit"]
        print(f"| {method} | {fs:.2f} | {ms:.2f} | {ms / fs:.1f}× | {fr / 2**20:.0f} | {mr / 2**20:.0f} | "
              f"{fr / input_bytes:.2f}× | {diff:.1e}{' (tensor sets differ: ' + str(missing) + ')' if missing else ''} |")


if __name__ == "__main__":
    if PHASE == "generate":
        generate()
    elif PHASE == "compare":
        compare(sys.argv[5], sys.argv[6])
    else:
        main()
