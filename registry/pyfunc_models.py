"""Models-from-code entry of every revelio pyfunc model (no pickle); the artifact name gives the kind."""
import mlflow

from revelio_svc.registry.models import RevelioPyfunc

mlflow.models.set_model(RevelioPyfunc())
