"""The one local SparkSession of a skewless process, configured by the feature repository.

The session takes exactly the `offline_store.spark_conf` of `feature_store.yaml`, so the
backfill and Feast's Spark offline store (which reuses the active session) run on one JVM with
one configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pyspark.sql import SparkSession

from skewless.feature_store import export_environment, spark_conf
from skewless.logs import child_stderr_to_log
from skewless.settings import Settings

logger = logging.getLogger(__name__)

APP_NAME = "skewless"
DRIVER_LOG_CONFIG = Path(__file__).parent / "assets" / "spark-log4j2.properties"
"""log4j2 configuration of the driver JVM: errors only."""


def spark_session(settings: Settings) -> SparkSession:
    """The active SparkSession, or a new local one built from the repository's `spark_conf`.

    `SPARK_LOCAL_IP` and the other Feast variables are exported before the JVM starts, so
    Spark binds loopback only.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        logger.debug("reusing the active Spark session %s", active.sparkContext.applicationId)
        return active
    export_environment(settings)
    conf = spark_conf(settings)
    log_option = f"-Dlog4j2.configurationFile={DRIVER_LOG_CONFIG.as_uri()}"
    java_options = conf.get("spark.driver.extraJavaOptions", "")
    conf["spark.driver.extraJavaOptions"] = f"{java_options} {log_option}".strip()
    builder = SparkSession.builder.appName(APP_NAME)
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    with child_stderr_to_log():
        session = builder.getOrCreate()
    logger.info(
        "Spark %s session started (master %s)", session.version, session.sparkContext.master
    )
    return session
