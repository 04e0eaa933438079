"""Run by torchrun in the tests: train the SAE of a tiny planted store; rank 0 prints the final metrics.

    python train.py ROOT STEPS OUTPUT VARIANT [KILL_RANK KILL_STEP]
"""
import json
import os
import signal
import sys
from pathlib import Path

from revelio_svc import distributed
from revelio_svc.sae import trainer
from tests.sae.helpers import tiny_cfg

root, steps, output, variant = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
on_step = None
if len(sys.argv) > 5 and int(os.environ.get("RANK", "0")) == int(sys.argv[5]):
    kill_at = int(sys.argv[6])

    def on_step(step, stats):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = tiny_cfg(root, root / "store", steps=steps, output=str(root / output), variant=variant)
res = trainer.train_sae(cfg, progress=False, on_step=on_step)
if distributed.is_main():
    print("METRICS " + json.dumps({**res.metrics, "resumed_from": res.resumed_from}))
distributed.shutdown()
