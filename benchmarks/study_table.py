"""A tuning study as a table: every trial's parameters, its objective and the headline numbers against
the matched random dictionary, as the trial runs logged them (markdown, best first).

Run after `revelio tune --config mlproject/configs/study_gap.yaml`:
    python benchmarks/study_table.py [--experiment revelio] [--study sae-gap]
(the tracking store is MLflow's: MLFLOW_TRACKING_URI, else mlflow.db in the current folder)
"""
from __future__ import annotations

import argparse

import mlflow

PARAMS = ("variant", "expansion", "k", "normalize", "whiten_power", "steps")
COLUMNS = (  # (header, metric, format)
    ("purity share SAE / random", ("label_purity_share.shape", "control.random.label_purity_share.shape"), "{:.3f}"),
    ("detectors SAE / random", ("dissection.detectors", "control.random.dissection.detectors"), "{:.0f}"),
    ("16-sparse SAE / random", ("sparse_probe.k16", "control.random.sparse_probe.k16"), "{:.3f}"),
    ("fvu", ("fvu",), "{:.3f}"),
    ("dead", ("dead_frac",), "{:.3f}"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="revelio")
    ap.add_argument("--study", default="sae-gap")
    args = ap.parse_args()
    runs = mlflow.search_runs(experiment_names=[args.experiment], output_format="list",
                              filter_string=f"tags.stage = 'tune_trial' and tags.`optuna.study` = '{args.study}'")
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        value = m.get("value")
        cells = [t.get("optuna.trial", "?"), t.get("optuna.state", "?"), f"{value:.3f}" if value is not None else "–"]
        cells += [p.get(f"sae.{k}", "–") for k in PARAMS]
        for _, keys, fmt in COLUMNS:
            cells.append(" / ".join(fmt.format(m[k]) if k in m else "–" for k in keys))
        rows.append((value if value is not None else float("-inf"), cells))
    head = ["trial", "state", "gap.score", *PARAMS, *(c[0] for c in COLUMNS)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for _, cells in sorted(rows, key=lambda x: -x[0]):
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
