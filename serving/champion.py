"""The model that serving uses: the registry's champion, in its exported ONNX form, hot-swapped.

At start the champion is loaded (retrying with backoff while the registry is unreachable) and
warmed up. A background thread polls the alias; a new version is loaded and warmed up beside
the old one, then swapped in with one assignment, so a batch is always scored by exactly one
complete model. If the registry becomes unreachable later, the loaded model stays.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skewless.registry import CHAMPION
from skewless.settings import Settings
from training import tracking
from training.model import OnnxScorer

logger = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """The registry has no champion version to serve."""


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


def load_version(settings: Settings, version: str | None = None) -> LoadedModel:
    """Load `version` (default: the champion) of the configured model from the registry."""
    import mlflow

    client = tracking.configure(settings)
    name = settings.model_name
    if version is None:
        try:
            version = str(client.get_model_version_by_alias(name, CHAMPION).version)
        except mlflow.exceptions.MlflowException as exc:
            raise NoChampionError(f"{name} has no {CHAMPION} alias: run `make train`") from exc
    # The scorer reads the ONNX file into memory, so the download is removed once it is built.
    with tempfile.TemporaryDirectory(prefix=f"skewless-model-{version}-") as target:
        extra = tracking.download_model(name, version, Path(target)) / "extra_files"
        spec: dict[str, Any] = json.loads((extra / tracking.SPEC_FILE).read_text())
        if spec["feature_service"] != settings.feature_service:
            raise NoChampionError(
                f"{name} version {version} needs feature service {spec['feature_service']}, "
                f"serving is configured for {settings.feature_service}"
            )
        model = LoadedModel(
            name=name,
            version=version,
            feature_service=spec["feature_service"],
            feature_names=tuple(spec["feature_names"]),
            scorer=OnnxScorer(extra / tracking.ONNX_FILE),
        )
    model.warm_up()
    logger.info("loaded %s version %s (%d features)", name, version, len(model.feature_names))
    return model


def load_with_retry(
    settings: Settings, deadline_s: float, first_delay_s: float = 0.5
) -> LoadedModel:
    """Load the champion, retrying with exponential backoff until `deadline_s` passes."""
    started = time.monotonic()
    delay = first_delay_s
    while True:
        try:
            return load_version(settings)
        except Exception as exc:  # the registry may be down: any failure is retried
            if time.monotonic() - started + delay > deadline_s:
                raise
            logger.warning("cannot load the champion yet (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class ChampionWatcher:
    """Holds the current model and swaps in a new champion when the alias moves."""

    def __init__(self, settings: Settings, model: LoadedModel, poll_s: float) -> None:
        self.settings = settings
        self.current = model
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self) -> ChampionWatcher:
        if self.poll_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check_once(self) -> bool:
        """Look at the alias once; swap if it moved. True if a new model is in use."""
        client = tracking.configure(self.settings)
        version = str(client.get_model_version_by_alias(self.settings.model_name, CHAMPION).version)
        if version == self.current.version:
            return False
        replacement = load_version(self.settings, version)
        previous, self.current = self.current.version, replacement
        logger.info("champion changed: serving version %s (was %s)", version, previous)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception as exc:  # keep serving the loaded model whatever the registry does
                logger.warning(
                    "champion poll failed, keeping version %s: %s", self.current.version, exc
                )
