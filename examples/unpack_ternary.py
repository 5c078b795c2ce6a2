"""Unpack the ternary weights of a forge `quantized-model` with numpy alone, from README's
layout ("Phase 4", "The file"): python3 examples/unpack_ternary.py MODEL.safetensors [OUT.npz]"""
import json, struct, sys
import numpy as np

def read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header.pop("__metadata__")["forge"])
    def tensor(name, dtype):
        a, b = header[name]["data_offsets"]
        return np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dtype).reshape(header[name]["shape"])
    weights = {}
    for name, (n_in, n_out) in meta["ternary"].items():
        packed = tensor(name, np.uint8)                        # [out, ceil(in/128)*32]
        blocks = packed.reshape(n_out, -1, 32)                 # 32 bytes per 128 weights
        shifts = np.array([6, 4, 2, 0], dtype=np.uint8)        # weights p, p+32, p+64, p+96
        codes = (blocks[:, :, None, :] >> shifts[None, None, :, None]) & 3
        ternary = codes.reshape(n_out, -1)[:, :n_in].astype(np.int8) - 1   # code w+1 -> w
        weights[name] = (ternary.T * tensor(name + ".scale", np.float32)[0], ternary)
    return meta, weights

if __name__ == "__main__":
    meta, weights = read(sys.argv[1])
    for name, (w, t) in sorted(weights.items()):
        print(f"{name} {list(w.shape)} zeros {np.mean(t == 0):.3f}")
    if len(sys.argv) > 2:
        np.savez(sys.argv[2], **{k: w for k, (w, _) in weights.items()})
