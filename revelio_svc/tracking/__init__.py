"""MLflow tracking: where runs go (setup) and how stage results become runs (the adapter in runs.py)."""
from .runs import (
    DESCRIPTIONS,
    RUN_NAME_TAG,
    distributed_params,
    flat_params,
    log_json,
    log_metrics,
    log_params_once,
    log_result,
    log_stage_inputs,
    log_store_inputs,
    run_name,
    run_tags,
    stage_params,
    stage_run,
    step_logger,
)
from .setup import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TrackingUnavailableError,
    check_server,
    setup,
    tracking_uri,
    ui_link,
)
from .status import closing_run, end_status

__all__ = ["DEFAULT_TRACKING_URI", "DESCRIPTIONS", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "RUN_NAME_TAG",
           "TrackingUnavailableError", "check_server", "closing_run", "distributed_params", "end_status",
           "flat_params", "log_json", "log_metrics", "log_params_once", "log_result", "log_stage_inputs",
           "log_store_inputs", "run_name", "run_tags", "setup", "stage_params", "stage_run", "step_logger",
           "tracking_uri", "ui_link"]
