"""The model that serving uses: the registry's champion, in its exported ONNX form, hot-swapped.

At start the champion is loaded (retrying with backoff while the registry is unreachable) and
warmed up. A background thread polls the alias; a new version is loaded and warmed up beside
the old one, then swapped in with one assignment, so a batch is always scored by exactly one
complete model. If the registry becomes unreachable later, the loaded model stays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from skewless import registry
from skewless.model_runtime import LoadedModel, ModelSpecError, load_model
from skewless.registry import CHAMPION
from skewless.settings import Settings

logger = logging.getLogger(__name__)


class NoChampionError(RuntimeError):
    """The registry has no champion version to serve."""


def load_version(settings: Settings, version: str | None = None) -> LoadedModel:
    """Load `version` (default: the champion) of the configured model from the registry."""
    from mlflow.exceptions import MlflowException

    client = registry.client(settings)
    name = settings.model_name
    if version is None:
        try:
            version = str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException as exc:
            if not registry.answered_no(exc):
                raise  # the registry is unreachable: retried by the caller, not "no champion"
            raise NoChampionError(f"{name} has no {CHAMPION} alias: run `make train`") from exc
    try:
        model = load_model(settings, version)
    except ModelSpecError as exc:
        raise NoChampionError(str(exc)) from exc
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
        self.accepts: Callable[[LoadedModel], None] = lambda model: None
        """Raises if a model must not be served (the scoring core sets its contract check)."""
        self.on_poll: Callable[[Exception | None], None] = lambda failure: None
        """Told each poll's outcome: None, or the exception (the worker's health shows it)."""
        self.refused: str | None = None
        """The last version `accepts` refused; not loaded again until the alias moves on."""
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
        client = registry.client(self.settings)
        version = str(client.get_model_version_by_alias(self.settings.model_name, CHAMPION).version)
        if version in (self.current.version, self.refused):
            return False
        return self.swap(load_version(self.settings, version))

    def swap(self, replacement: LoadedModel) -> bool:
        """Serve `replacement` from now on, unless `accepts` refuses it (that raises, and the
        current model stays)."""
        try:
            self.accepts(replacement)
        except Exception as exc:
            self.refused = replacement.version
            logger.error(
                "not serving version %s, keeping %s: %s",
                replacement.version,
                self.current.version,
                exc,
            )
            raise
        previous, self.current = self.current.version, replacement
        logger.info("champion changed: serving version %s (was %s)", replacement.version, previous)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
                self.on_poll(None)
            except Exception as exc:  # keep serving the loaded model whatever the registry does
                self.on_poll(exc)
                logger.warning(
                    "champion poll failed, keeping version %s: %s", self.current.version, exc
                )
