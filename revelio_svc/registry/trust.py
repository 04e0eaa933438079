"""The one piece of a registered model that is code, and the check that it is ours.

A revelio model is logged as an MLflow *model from code*: next to the weights (safetensors + JSON, never
executed) MLflow stores a Python file, `ENTRY_CODE`, and `mlflow.pyfunc.load_model` (`mlflow models serve`
included) imports and runs that file from the artifact store. Whoever can write to the artifact store can
therefore run code in every process that loads the model through MLflow (registry/README.md, "Trust").

revelio's own loaders never run it: they read the weights. They still check it before using a model
(`verify_code`): the code file must be byte for byte the text this installed package writes, MLflow must be
told to load it the way revelio logs it (the models-from-code loader, no extra code directories), so a
tampered model is refused with a message instead of being served or pulled on to another machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UntrustedModelError

# Kept identical to registry/pyfunc_models.py (a test compares them): the file MLflow stores and runs on load.
ENTRY_CODE = '''"""Models-from-code entry of every revelio pyfunc model (no pickle); the artifact name gives the kind."""
import mlflow

from revelio_svc.registry.models import RevelioPyfunc

mlflow.models.set_model(RevelioPyfunc())
'''

CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # what MLflow writes into MLmodel for a model from code


def verify_code(model_dir: Path, mlmodel: dict[str, Any]) -> None:
    """Refuse (UntrustedModelError) an MLflow model whose code is not exactly what this package logs."""
    pf = (mlmodel.get("flavors") or {}).get("python_function") or {}
    where = f"the MLflow model at {model_dir}"
    advice = ("; it was changed after revelio logged it (or logged by something else). Do not load it with "
              "mlflow.pyfunc.load_model or `mlflow models serve`, which run that code; re-register the model "
              "from its run (`revelio run --set force=true`) and check who can write to the artifact store")
    if pf.get("loader_module") != CODE_LOADER:
        raise UntrustedModelError(f"{where} is loaded by {pf.get('loader_module')!r}, not {CODE_LOADER!r}"
                                  + advice)
    if pf.get("code"):
        raise UntrustedModelError(f"{where} adds code directories to the import path ({pf['code']!r})" + advice)
    name = str(pf.get("model_code_path") or "").replace("\\", "/").rsplit("/", 1)[-1]  # MLflow uses the base name
    code_file = Path(model_dir) / name
    if not name or not code_file.is_file():
        raise UntrustedModelError(f"{where} names no code file revelio wrote (model_code_path "
                                  f"{pf.get('model_code_path')!r})" + advice)
    try:
        text = code_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UntrustedModelError(f"{where}: its code file {code_file} cannot be read ({e})" + advice) from e
    if text != ENTRY_CODE:
        raise UntrustedModelError(f"{where}: its code file {code_file.name} differs from the one this revelio "
                                  f"installation writes (revelio_svc.registry.trust.ENTRY_CODE)" + advice)
