"""numpy's (OpenBLAS) f32 matrix-vector and matrix-matrix products on the shapes of
ops/benches/ternary_kernel.rs, for bench/ternary_kernel.sh. Prints one JSON line per product."""
import json, sys, time
import numpy as np

threads, tokens = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(1)

def timed(f):
    f()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < 0.3:
        f()
        n += 1
    return (time.perf_counter() - t0) / n

for out_f, in_f in [(512, 512), (1536, 512), (512, 1536), (4096, 4096)]:
    w = rng.uniform(-0.05, 0.05, (in_f, out_f)).astype(np.float32)
    for n in (1, tokens):
        x = rng.uniform(-1, 1, (n, in_f)).astype(np.float32)
        s = timed(lambda: x @ w)
        print(json.dumps({"impl": "numpy", "numpy": np.__version__, "shape": [out_f, in_f],
                          "tokens": n, "threads": threads, "f32_ms": s * 1e3}))
