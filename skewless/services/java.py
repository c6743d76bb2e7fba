"""The Java runtime that Kafka and Spark local mode need."""

from __future__ import annotations

import re
import shutil
import subprocess

from skewless.services.process import ServiceError

MINIMUM_MAJOR = 17


def java_major_version(output: str) -> int | None:
    """The major version in the text of `java -version`, e.g. 17 from 'version "17.0.15"'."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older print 1.8, 1.7, ...
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """Path of a `java` of version 17 or newer; a clear error if there is none."""
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            f"java was not found on PATH; Kafka and Spark need Java {MINIMUM_MAJOR}+ "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    major = java_major_version(result.stderr + result.stdout)
    if major is None or major < MINIMUM_MAJOR:
        raise ServiceError(
            f"{java} reports version {major}, Kafka and Spark need Java {MINIMUM_MAJOR}+ "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    return java
