"""The trainer from Python: submit training, processing and tuning jobs, follow them, and
compare the runs of an experiment.

>>> from mlbus.sdk.trainer import TrainerClient, training_spec
>>> with TrainerClient() as trainer:
...     job = trainer.submit_training(
...         training_spec("/data/churn.csv", target="churned", algorithm="random-forest-classifier",
...                       model_group="churn"), experiment="churn")
...     job = trainer.wait(job.job_id)
"""

from mlbus.sdk.trainer.client import (
    DEFAULT_TRAINER,
    TRAINER_ENV,
    TrainerClient,
    default_trainer,
    job_to_dict,
)
from mlbus.sdk.trainer.specs import parse_range, processing_spec, training_spec, tuning_spec

__all__ = [
    "DEFAULT_TRAINER",
    "TRAINER_ENV",
    "TrainerClient",
    "default_trainer",
    "job_to_dict",
    "parse_range",
    "processing_spec",
    "training_spec",
    "tuning_spec",
]
