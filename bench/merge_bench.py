"""forge vs mergekit on the same files: linear, slerp and ties merges of two Llama-architecture
checkpoints (plus a base for ties), generated here with fixed seeds, at one of three sizes
(FORGE_MERGE_SIZE: `25m` by default, `438m`, `1b`).

For each method and tool: wall time and peak RSS of the merging process (os.wait4), best of
REPS runs, and the largest absolute difference between the two tools' outputs (a check that
forge implements mergekit's semantics). In the same run, the I/O floor: reading the merge's
inputs from the page cache (`cat` to /dev/null) plus writing and fsyncing a file of the output's
size in 8 MiB writes — no merge can be faster than that on this machine. With FORGE_BIN (the
`forge` binary), also the whole `forge apply --force merged` of a pipeline with two `download`
steps (`source: file:`, `kind: model`) and the merge step: what a user waits for, storing and
hashing the output included. Prints one JSON line per measurement and a markdown table.

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
import tempfile
import time

FORGE, WORK = sys.argv[1], sys.argv[2]
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
MERGEKIT = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
PHASE = sys.argv[4] if len(sys.argv) > 4 else "main"

# Llama geometries (vocab, d, layers, SwiGLU width; 8 heads): 25m → 25.5M parameters,
# 438m → 438M, 1b → 1.0B.
SIZES = {"25m": (6144, 512, 6, 1408), "438m": (32000, 1536, 12, 4096), "1b": (32000, 2048, 16, 5632)}
SIZE = os.environ.get("FORGE_MERGE_SIZE", "25m")
if SIZE not in SIZES:
    sys.exit(f"FORGE_MERGE_SIZE={SIZE}: expected one of {', '.join(SIZES)}")
V, D, L, F = SIZES[SIZE]
FORGE_BIN = os.environ.get("FORGE_BIN")
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
    # stderr to a file, not a pipe: a chatty tool (progress bars) must not block on a full pipe.
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        if status != 0:
            err.seek(0)
            sys.exit(f"{cmd[0]} failed: {err.read().decode(errors='replace')[-2000:]}")
    return secs, ru.ru_maxrss * 1024  # Linux: KiB


def io_floor(inputs, out_bytes):
    """Seconds to read `inputs` (from the page cache: each is read once before timing) and to
    write and fsync `out_bytes` bytes in 8 MiB writes, in a child process (JSON on stdout)."""
    chunk = b"\x5a" * (8 << 20)
    for f in inputs:  # warm the page cache, as the merges find it
        subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True)
    t0 = time.perf_counter()
    for f in inputs:
        subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True)
    read = time.perf_counter() - t0
    path = os.path.join(WORK, "floor.bin")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = out_bytes
    while left > 0:
        left -= os.write(fd, chunk[:min(left, len(chunk))])
    os.fsync(fd)
    os.close(fd)
    write = time.perf_counter() - t0
    os.remove(path)
    print(json.dumps({"read": read, "write": write}))


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
    output_bytes = os.path.getsize(os.path.join(a, "model.safetensors"))
    floors = [json.loads(in_child("floor", str(output_bytes), a, b)) for _ in range(REPS)]
    floor2 = min(f["read"] + f["write"] for f in floors)
    floor3 = min(f["read"] * 1.5 + f["write"] for f in floors)  # ties also reads the base
    print(json.dumps({"io_floor": floors}), flush=True)
    apply_times = apply_runs() if FORGE_BIN else {}
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
    best = min(floors, key=lambda f: f["read"] + f["write"])
    print()
    print(f"Inputs: two {nparams / 1e6:.1f}M-parameter F32 Llama checkpoints "
          f"({input_bytes / 2**20:.0f} MiB together; ties also reads the base), {REPS} runs each, best shown; "
          f"peak RSS floor of a process spawned by this driver: {floor / 2**20:.0f} MiB.")
    print(f"I/O floor (best of {REPS}): reading both inputs from the page cache {best['read']:.2f} s, "
          f"writing and fsyncing {output_bytes / 2**20:.0f} MiB {best['write']:.2f} s: {floor2:.2f} s "
          f"({floor3:.2f} s for ties, which reads three files).")
    print()
    print("| method | forge s | × I/O floor | `forge apply` step s | × I/O floor | mergekit s | speed-up | "
          "forge peak RSS MiB | mergekit peak RSS MiB | forge RSS / inputs | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, res, cmp in rows:
        diff, missing = cmp["diff"], cmp["missing"]
        (fs, fr), (ms, mr) = res["forge"], res["mergekit"]
        fl = floor3 if method == "ties" else floor2
        ap = apply_times.get(method)
        aps = f"{ap:.2f} | {ap / fl:.2f}×" if ap else "– | –"
        print(f"| {method} | {fs:.2f} | {fs / fl:.2f}× | {aps} | {ms:.2f} | {ms / fs:.1f}× | {fr / 2**20:.0f} | "
              f"{mr / 2**20:.0f} | {fr / input_bytes:.2f}× | "
              f"{diff:.1e}{' (tensor sets differ: ' + str(missing) + ')' if missing else ''} |")


PIPELINE = """version: 1
name: merge-bench
phases:
  merge:
    steps:
      a: { op: download, with: { source: "file:a", kind: model } }
      b: { op: download, with: { source: "file:b", kind: model } }
      base: { op: download, with: { source: "file:base", kind: model } }
      linear:
        op: merge
        inputs: { models: [a, b] }
        with: { strategy: merge, technique: { method: linear, normalize: true } }
      slerp:
        op: merge
        inputs: { models: [a, b] }
        with: { strategy: merge, technique: { method: slerp, t: 0.5 } }
      ties:
        op: merge
        inputs: { base: base, models: [a, b] }
        with:
          strategy: merge
          technique: { method: ties, density: 0.5, lambda: 1.0, normalize: true }
"""


def apply_runs():
    """Best wall time of `forge apply --only M --force M` per method: the downloads are cached
    after the first apply, so each run is the merge step plus planning, storing and hashing."""
    path = os.path.join(WORK, "merge-bench.yaml")
    with open(path, "w") as fh:
        fh.write(PIPELINE)
    run([FORGE_BIN, "apply", path, "--only", "a", "--only", "b", "--only", "base"])
    times = {}
    for method in ("linear", "slerp", "ties"):
        cmd = [FORGE_BIN, "apply", path, "--only", method, "--force", method]
        t = min(run(cmd)[0] for _ in range(REPS))
        times[method] = t
        print(json.dumps({"tool": "forge apply", "method": method, "seconds": round(t, 3)}), flush=True)
    return times


if __name__ == "__main__":
    if PHASE == "generate":
        generate()
    elif PHASE == "compare":
        compare(sys.argv[5], sys.argv[6])
    elif PHASE == "floor":
        io_floor([os.path.join(d, "model.safetensors") for d in sys.argv[6:]], int(sys.argv[5]))
    else:
        main()
