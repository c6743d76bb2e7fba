"""MLflow: the run's contents, the logged model (PyTorch + its ONNX export), the gate.

A model version carries everything serving needs in its artifact: `extra_files/model.onnx`
(the same weights, preprocessing inside) and `extra_files/model_spec.json` (feature service,
feature order, preprocessing numbers). `skewless.model_runtime` loads those, never the pyfunc.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from skewless.fraud_metrics import average_precision
from skewless.logs import prints_to_log
from skewless.model_runtime import ONNX_FILE, SPEC_FILE, OnnxScorer, load_scorer
from skewless.registry import (
    CHALLENGER,
    GATE,
    GATE_METRIC,
    champion_version,
    passes_gate,
    promote,
)
from skewless.services.mlflow_server import OFFLINE_ENV
from skewless.settings import Settings
from training import search
from training.model import ENSEMBLE, TrainedModel, TrainingParams, export_onnx
from training.protocol import TimeSplit

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

logger = logging.getLogger(__name__)

EXPERIMENT = "fraud-detection"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class GateDecision:
    """What the quality gate decided for a new version."""

    version: str
    promoted: bool
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    folds: tuple[int, ...] = (0,)
    """The folds both were scored on (the scores are means over them); fold 0 is the latest."""


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' store and make sure the experiment exists."""
    for variable, value in OFFLINE_ENV.items():
        os.environ.setdefault(variable, value)
    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        location = settings.mlflow_artifact_root / EXPERIMENT
        mlflow.create_experiment(EXPERIMENT, artifact_location=location.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient()


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (or of a folder's files in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def definition_hash(store: FeatureStore, service: FeatureService) -> str:
    """sha256 of the registered specs the model depends on: its service and their views."""
    from feast.errors import FeatureViewNotFoundException

    digest = hashlib.sha256(service.to_proto().spec.SerializeToString(deterministic=True))
    for projection in service.feature_view_projections:
        name = projection.name
        try:
            view: Any = store.get_feature_view(name)
        except FeatureViewNotFoundException:  # an on-demand view has a lookup of its own
            view = store.get_on_demand_feature_view(name)
        digest.update(view.to_proto().spec.SerializeToString(deterministic=True))
    return digest.hexdigest()


def git_commit(cwd: Path) -> str:
    """The commit of the code that trained, or 'unknown' outside a git checkout."""
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def model_params(params: TrainingParams) -> dict[str, str]:
    """A model's run parameters: its family and every training setting; an ensemble's are its
    members', under `member<k>_`."""
    if params.members:
        return {"family": params.family} | {
            f"member{k}_{key}": value
            for k, member in enumerate(params.members)
            for key, value in model_params(member).items()
        }
    return {"family": params.family} | {
        key: str(value) for key, value in vars(params).items() if key != "members"
    }


def logged_params(logged: Mapping[str, str]) -> TrainingParams:
    """The training settings `model_params` logged, read back (a retrain trains the champion's
    own model). A setting missing from the run keeps its default (runs logged before it
    existed); a value that does not parse raises ValueError naming the parameter."""
    if logged.get("family") == ENSEMBLE:
        members: list[TrainingParams] = []
        while any(key.startswith(f"member{len(members)}_") for key in logged):
            prefix = f"member{len(members)}_"
            members.append(
                logged_params(
                    {k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)}
                )
            )
        return TrainingParams(members=tuple(members))
    values: dict[str, Any] = {}
    for setting in fields(TrainingParams):
        if setting.name == "members" or setting.name not in logged:
            continue
        text = logged[setting.name]
        default: Any = setting.default
        try:
            if isinstance(default, tuple):
                value = ast.literal_eval(text)
                values[setting.name] = tuple(int(size) for size in value)
            elif isinstance(default, str):
                values[setting.name] = text
            else:
                values[setting.name] = type(default)(text)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise ValueError(f"logged parameter {setting.name}={text!r} is not readable") from exc
    return TrainingParams(**values)


def log_candidate(result: search.CandidateResult) -> None:
    """One candidate of the search as a nested run: its params, each validation fold's
    figures, best epoch and seconds (`fold_<k>_...`), and their means and deviations."""
    with mlflow.start_run(run_name=result.candidate.name, nested=True):
        mlflow.set_tag("role", "candidate")
        mlflow.log_params(
            {"candidate": result.candidate.name} | model_params(result.candidate.params)
        )
        metrics = result.statistics()
        for score in result.folds:
            metrics |= {f"fold_{score.fold}_{key}": value for key, value in score.metrics.items()}
            metrics[f"fold_{score.fold}_best_epoch"] = score.best_epoch
            metrics[f"fold_{score.fold}_seconds"] = score.seconds
        mlflow.log_metrics(metrics)


def log_selection(
    results: list[search.CandidateResult],
    chosen: search.CandidateResult,
    validation_windows: list[TimeSplit],
) -> None:
    """On the parent run: the search space, every candidate's figures, the validation
    windows, the choice (`selection_chosen`, tag `model_family`) and its validation figures."""
    mlflow.log_dict(search.search_space(), "search_space.json")
    table = {
        result.candidate.name: {"family": result.candidate.params.family}
        | result.statistics()
        | {"best_epochs": [score.best_epoch for score in result.folds]}
        for result in results
    }
    mlflow.log_dict(table, "search_results.json")
    windows = {
        f"validation_fold_{index}_{key}": value
        for index, split in enumerate(validation_windows)
        for key, value in split.as_params().items()
    }
    mlflow.log_params(
        windows
        | {
            "selection_metric": search.SELECTION_METRIC,
            "selection_candidates": str(len(results)),
            "selection_chosen": chosen.candidate.name,
        }
    )
    mlflow.log_metrics(chosen.statistics())
    mlflow.set_tag("model_family", chosen.candidate.params.family)


def model_spec(model: TrainedModel, feature_service: str) -> dict[str, Any]:
    """What serving needs besides the weights: the contract and the fitted preprocessing."""
    return {
        "feature_service": feature_service,
        "feature_names": list(model.preprocessor.feature_names),
        "preprocessor": model.preprocessor.to_dict(),
        "onnx_input": "features",
        "onnx_output": "score",
    }


def log_model(
    model: TrainedModel,
    settings: Settings,
    example: pd.DataFrame,
    workdir: Path,
) -> str:
    """Log the PyTorch model with its ONNX export and spec, register it; returns the version."""
    onnx_path = export_onnx(model, workdir / ONNX_FILE)
    spec_path = workdir / SPEC_FILE
    spec_path.write_text(json.dumps(model_spec(model, settings.feature_service), indent=1))
    sample = example[list(model.preprocessor.feature_names)].astype("float32")
    scores = OnnxScorer(onnx_path).score(sample.to_numpy())
    with prints_to_log("mlflow"):
        info = mlflow.pytorch.log_model(
            model.module,
            name=MODEL_ARTIFACT,
            signature=infer_signature(sample, scores),
            input_example=sample.head(5),
            pip_requirements=[
                f"torch=={_version('torch')}",
                f"onnxruntime=={_version('onnxruntime')}",
            ],
            serialization_format="pickle",
            extra_files=[str(onnx_path), str(spec_path)],
            registered_model_name=settings.model_name,
        )
    version = str(info.registered_model_version)
    logger.info("registered %s version %s", settings.model_name, version)
    return version


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@dataclass(frozen=True)
class GateFold:
    """One fold's protocol test set (every column a model may read) and the challenger's score
    on it."""

    test_start: datetime
    test_end: datetime
    rows: pd.DataFrame
    labels: np.ndarray
    challenger_score: float


def apply_gate(
    client: MlflowClient,
    settings: Settings,
    version: str,
    folds: list[GateFold],
    workdir: Path,
) -> GateDecision:
    """Tag the new version challenger; promote it if it beats the champion on the same folds.

    The champion is scored on each fold's protocol test set and both means of `GATE_METRIC`
    are compared, over the folds whose test window the champion did not train on (its run's
    `window_train_start` and `window_train_end`): an older champion would otherwise be scored
    on its own training days. With no such fold the champion stays.
    """
    name = settings.model_name
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = champion_version(client, name)
    used = list(range(len(folds)))
    champion_score = None
    if current is not None:
        trained = _training_window(client, name, current)
        used = [i for i, fold in enumerate(folds) if not _overlaps(fold, trained)]
        if used:
            scorer = load_scorer(settings, current, workdir / f"champion-{current}")
            champion_score = float(
                np.mean(
                    [
                        average_precision(folds[i].labels, _score(scorer, folds[i].rows))
                        for i in used
                    ]
                )
            )
    challenger_score = float(np.mean([folds[i].challenger_score for i in used])) if used else 0.0
    promoted = bool(used) and passes_gate(challenger_score, champion_score)
    if promoted:
        promote(client, name, version, action=GATE)
        client.delete_registered_model_alias(name, CHALLENGER)
    decision = GateDecision(
        version, promoted, challenger_score, current, champion_score, tuple(used)
    )
    client.set_model_version_tag(name, version, "gate", json.dumps(asdict(decision)))
    logger.info(
        "gate: version %s %s=%.4f vs champion %s %s over folds %s -> %s",
        version,
        GATE_METRIC,
        challenger_score,
        current,
        "n/a" if champion_score is None else f"{champion_score:.4f}",
        used or "none (the champion trained on every test window)",
        "champion" if promoted else "stays challenger",
    )
    return decision


def _score(scorer: OnnxScorer, rows: pd.DataFrame) -> np.ndarray:
    """The champion's scores of `rows`, read in its own input order (it may read other
    columns than the challenger: another family, the history or not)."""
    return scorer.score(rows[list(scorer.feature_names)].to_numpy(dtype="float32"))


def _training_window(
    client: MlflowClient, name: str, version: str
) -> tuple[datetime, datetime] | None:
    """The training window a version's run logged, if it did."""
    run_id = client.get_model_version(name, version).run_id
    params = client.get_run(run_id).data.params if run_id else {}
    if "window_train_start" not in params or "window_train_end" not in params:
        return None
    start = datetime.fromisoformat(params["window_train_start"])
    return start, datetime.fromisoformat(params["window_train_end"])


def _overlaps(fold: GateFold, window: tuple[datetime, datetime] | None) -> bool:
    return window is not None and fold.test_start < window[1] and window[0] < fold.test_end
