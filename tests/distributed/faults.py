"""Run by torchrun in the tests: `revelio ARGV` with a fault injected on one rank.

    python faults.py raise RANK ARGV...             rank RANK raises in its first forward
    python faults.py kill-after-shard RANK ARGV...  rank RANK is SIGKILLed once its first shard is recorded
"""
import os
import signal
import sys

mode, victim, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if int(os.environ.get("RANK", "0")) == victim:
    if mode == "raise":
        from revelio_svc.features import extract

        def boom(*a, **k):
            raise RuntimeError("injected failure")

        extract.pool = boom
    elif mode == "kill-after-shard":
        from revelio_svc.features.store import StoreWriter

        record = StoreWriter.add_shard

        def record_then_die(self, i, entry):
            record(self, i, entry)
            os.kill(os.getpid(), signal.SIGKILL)

        StoreWriter.add_shard = record_then_die
    else:
        raise SystemExit(f"unknown fault {mode}")

from revelio_svc.cli.main import main  # noqa: E402

sys.exit(main(argv))
