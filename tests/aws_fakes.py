"""Playing SageMaker's part where moto does not: trials of a tuning job."""

from __future__ import annotations

from typing import Any

from training.sagemaker_requests import image_uri


def create_trial_job(sagemaker: Any, job: str, definition: dict[str, Any], region: str) -> None:
    """A finished training job under a tuning job's definition (moto completes it at once)."""
    sagemaker.create_training_job(
        TrainingJobName=job,
        AlgorithmSpecification={"TrainingImage": image_uri(region), "TrainingInputMode": "File"},
        RoleArn=definition["RoleArn"],
        InputDataConfig=definition["InputDataConfig"],
        OutputDataConfig=definition["OutputDataConfig"],
        ResourceConfig=definition["ResourceConfig"],
        StoppingCondition=definition["StoppingCondition"],
    )


def name_best(tuning: Any, job: str, msd: float, tuned: dict[str, str]) -> None:
    """Replace moto's hard-coded ``BestTrainingJob`` of a tuning job with a real trial."""
    tuning.best_training_job = {
        **tuning.best_training_job,
        "TrainingJobName": job,
        "TunedHyperParameters": tuned,
        "FinalHyperParameterTuningJobObjectiveMetric": {
            "Type": "Minimize",
            "MetricName": "test:msd",
            "Value": msd,
        },
    }
