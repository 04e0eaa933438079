"""How long pulling a registered model takes: first load (empty cache: download) vs. repeat (local cache).

Each measurement runs in a fresh Python process (imports are counted separately, as `import_s`), so the
figure is what a user's script pays. The baseline is the first load: what every load cost before versions
were cached. Targets (issue #18, default models of `make run`): first load <= 1.5 s, repeat <= 0.5 s.

Run after `make run` from the repository (or with MLFLOW_TRACKING_URI pointing at the store):
    python benchmarks/bench_registry.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

TARGETS_S = {"first": 1.5, "repeat": 0.5}
CODE = """
import json, sys, time
t0 = time.monotonic()
from revelio_svc import registry
t1 = time.monotonic()
getattr(registry, sys.argv[1])(sys.argv[2])
t2 = time.monotonic()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def measure(loader: str, uri: str, cache: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    out = subprocess.run([sys.executable, "-c", CODE, loader, uri], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        sys.exit(f"{loader}({uri!r}) failed; run `make run` first (or set MLFLOW_TRACKING_URI):\n{out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for loader, uri in (("load_sae", "revelio-sae@champion"), ("load_classifier", "revelio-classifier@champion")):
        first, repeat, imports = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                a = measure(loader, uri, cache)  # empty cache: downloads
                b = measure(loader, uri, cache)  # the same cache: reads it
            first.append(a["load_s"])
            repeat.append(b["load_s"])
            imports.append(a["import_s"])
        row = {"loader": loader, "uri": uri, "first_load_p50_s": round(statistics.median(first), 3),
               "repeat_load_p50_s": round(statistics.median(repeat), 3),
               "import_p50_s": round(statistics.median(imports), 3), "repeats": args.repeats}
        row["first_ok"] = row["first_load_p50_s"] <= TARGETS_S["first"]
        row["repeat_ok"] = row["repeat_load_p50_s"] <= TARGETS_S["repeat"]
        rows.append(row)
        print(json.dumps(row))
    print(f"targets: first load <= {TARGETS_S['first']} s, repeat <= {TARGETS_S['repeat']} s "
          f"(load time after `import revelio_svc.registry`)")


if __name__ == "__main__":
    main()
