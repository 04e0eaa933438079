"""log_result: what a stage result carries reaches the run, and the run ends showing the result's values."""
from __future__ import annotations

import mlflow

from revelio_svc.contracts import StageResult
from revelio_svc.tracking import log_result

pytest_plugins = ("tests.registry.fixtures",)


def test_final_values_that_differ_from_the_last_logged_are_logged_and_equal_ones_are_not(fresh_mlflow):
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_metrics({"fvu": 0.25, "gap.score": -0.3}, step=100)  # logged while training
        log_result(StageResult(identity="x", metrics={"fvu": 0.25, "gap.score": -0.4, "new": 1.0}), step=100,
                   skip_existing_metrics=True)
    rid = run.info.run_id
    assert len(client.get_metric_history(rid, "fvu")) == 1  # unchanged: not logged twice
    assert [m.value for m in client.get_metric_history(rid, "gap.score")] == [-0.3, -0.4]
    shown = client.get_run(rid).data.metrics
    assert shown["gap.score"] == -0.4 and shown["new"] == 1.0  # the run shows what the result says
