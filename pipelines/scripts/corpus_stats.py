"""Token statistics of a text corpus: the `stats` step of pipelines/hello.yaml.

Reads every .txt file under $FORGE_INPUT_CORPUS, writes stats.json and metrics.json
(flat metric names, read by the `validate` op) into $FORGE_OUTPUT.
"""
import collections
import json
import math
import os
import pathlib
import re

root = pathlib.Path(os.environ["FORGE_INPUT_CORPUS"])
out = pathlib.Path(os.environ["FORGE_OUTPUT"])
words = []
lines = 0
for path in sorted(root.rglob("*.txt")):
    for line in path.read_text(encoding="utf-8").splitlines():
        lines += 1
        words.extend(re.findall(r"[a-z']+", line.lower()))

counts = collections.Counter(words)
total = sum(counts.values())
entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
stats = {
    "lines": lines,
    "tokens": total,
    "vocab": len(counts),
    "top": counts.most_common(10),
}
metrics = {
    "corpus/lines": lines,
    "corpus/tokens": total,
    "corpus/vocab_size": len(counts),
    "corpus/unigram_entropy_bits": round(entropy, 4),
}
(out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
(out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
print(f"{total} tokens, {len(counts)} types, {entropy:.3f} bits/token")
