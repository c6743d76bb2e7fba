"""The model at run time, without torch: the exported ONNX graph, its spec and preprocessing.

A registered version carries in its MLflow model artifact `extra_files/model.onnx` (the
weights with the fitted preprocessing inside) and `extra_files/model_spec.json` (feature
service, feature order, preprocessing numbers); its run carries the reference statistics of
its training window. Training writes them; the training gate, serving and monitoring read them
here, through ONNX Runtime and MLflow's artifact API, so scoring never needs torch.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pandas as pd

from skewless import registry
from skewless.mlflow_env import apply_offline_env
from skewless.settings import Settings
from skewless.statistics import FeatureStatistics, load_statistics

FloatArray = npt.NDArray[np.float32]
ONNX_INPUT, ONNX_OUTPUT = "features", "score"
ONNX_FILE = "model.onnx"
SPEC_FILE = "model_spec.json"
REFERENCE_ARTIFACT = "reference_statistics.json"
"""The run artifact holding the training window's reference statistics."""
STD_FLOOR = 1e-9
"""A feature whose training standard deviation is below this is only centred (scale 1)."""


class ModelSpecError(RuntimeError):
    """A registered version does not fit the settings (another feature service)."""


@dataclass(frozen=True)
class Preprocessor:
    """Per-feature fill value (training median) and standardisation, in model input order."""

    feature_names: tuple[str, ...]
    fill_values: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __post_init__(self) -> None:
        sizes = {len(self.fill_values), len(self.means), len(self.stds)}
        if sizes != {len(self.feature_names)} or not self.feature_names:
            raise ValueError("a preprocessor needs one fill value, mean and std per feature")
        if min(self.stds) <= 0 or not np.isfinite(self.fill_values + self.means + self.stds).all():
            raise ValueError("stds must be positive; fill values, means and stds finite")

    @classmethod
    def fit(cls, features: pd.DataFrame) -> Preprocessor:
        """Medians, then mean and std of the median-filled training columns (all-NaN -> 0)."""
        values = features.astype(np.float64)
        medians = values.median().fillna(0.0)
        filled = values.fillna(medians)
        return cls(
            feature_names=tuple(str(name) for name in features.columns),
            fill_values=tuple(medians.tolist()),
            means=tuple(filled.mean().tolist()),
            stds=tuple(std if std >= STD_FLOOR else 1.0 for std in filled.std(ddof=0).tolist()),
        )

    def matrix(self, features: pd.DataFrame) -> FloatArray:
        """The raw float32 model input: `features`' columns picked in the preprocessor's order."""
        missing = [name for name in self.feature_names if name not in features.columns]
        if missing:
            raise KeyError(f"features missing from the frame: {missing}")
        return features.loc[:, list(self.feature_names)].to_numpy(dtype=np.float32)

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-serialisable form."""
        return {key: list(values) for key, values in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> Preprocessor:
        """Inverse of `to_dict` (validated like a fitted preprocessor)."""
        numbers = {key: tuple(float(v) for v in data[key]) for key in ("fill_values", "means")}
        return cls(
            feature_names=tuple(str(name) for name in data["feature_names"]),
            stds=tuple(float(value) for value in data["stds"]),
            **numbers,
        )


class OnnxScorer:
    """Scores raw float32 feature matrices with an exported model (one thread, sequential)."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.preprocessor = Preprocessor.from_dict(json.loads(metadata["preprocessor"]))
        self.feature_names = self.preprocessor.feature_names

    def score(self, matrix: npt.ArrayLike) -> FloatArray:
        """Fraud probability per row of a `(batch, n_features)` matrix in `feature_names` order."""
        array = np.ascontiguousarray(matrix, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != len(self.feature_names):
            raise ValueError(f"expected a (batch, {len(self.feature_names)}) matrix: {array.shape}")
        if not len(array):  # ONNX Runtime aborts the process on a GRU over an empty batch
            return np.empty(0, dtype=np.float32)
        scores: FloatArray = self._session.run([ONNX_OUTPUT], {ONNX_INPUT: array})[0]
        return scores


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to score raw feature matrices."""

    name: str
    version: str
    feature_service: str
    feature_names: tuple[str, ...]
    scorer: OnnxScorer

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return self.scorer.score(matrix)

    def warm_up(self) -> None:
        """Run the graph once per common batch shape so the first real batch is not slow."""
        for rows in (1, 64, 512):
            self.score(np.zeros((rows, len(self.feature_names)), dtype=np.float32))


def download_model(settings: Settings, version: str, workdir: Path) -> Path:
    """The local folder of a registered version's model (its `extra_files/` inside)."""
    import mlflow.artifacts

    apply_offline_env()
    workdir.mkdir(parents=True, exist_ok=True)
    # The version's own artifact location: a `models:/name/version` URI would be resolved
    # against MLflow's process-wide registry URI (a `mlflow.db` in the working directory,
    # unless something set it), not the settings' tracking URI.
    source = registry.client(settings).get_model_version_download_uri(settings.model_name, version)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(workdir), tracking_uri=settings.tracking_uri
    )
    return Path(path)


def load_scorer(settings: Settings, version: str, workdir: Path) -> OnnxScorer:
    """The ONNX scorer of a registered version, from its artifacts."""
    return OnnxScorer(download_model(settings, version, workdir) / "extra_files" / ONNX_FILE)


def load_model(settings: Settings, version: str) -> LoadedModel:
    """`version` of the configured model with its spec; it must need the configured service."""
    name = settings.model_name
    # The scorer reads the ONNX file into memory, so the download is removed once it is built.
    with tempfile.TemporaryDirectory(prefix=f"skewless-model-{version}-") as target:
        extra = download_model(settings, version, Path(target)) / "extra_files"
        spec: dict[str, Any] = json.loads((extra / SPEC_FILE).read_text())
        if spec["feature_service"] != settings.feature_service:
            raise ModelSpecError(
                f"{name} version {version} needs feature service {spec['feature_service']}, "
                f"serving is configured for {settings.feature_service}"
            )
        return LoadedModel(
            name=name,
            version=version,
            feature_service=spec["feature_service"],
            feature_names=tuple(spec["feature_names"]),
            scorer=OnnxScorer(extra / ONNX_FILE),
        )


def reference_statistics(settings: Settings, version: str) -> dict[str, FeatureStatistics]:
    """The training statistics logged with `version` of the configured model."""
    import mlflow.artifacts

    run_id = registry.client(settings).get_model_version(settings.model_name, version).run_id
    with tempfile.TemporaryDirectory(prefix="skewless-reference-") as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=REFERENCE_ARTIFACT,
            dst_path=folder,
            tracking_uri=settings.tracking_uri,
        )
        return load_statistics(Path(path))
