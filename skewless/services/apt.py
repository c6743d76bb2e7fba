"""Debian packages the platform needs, installed by the set-up when missing."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from skewless.services.process import ServiceError

logger = logging.getLogger(__name__)


def ensure_package(binary: str, package: str) -> str:
    """Path of `binary`; installs Debian's `package` when root, else says what to install."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        raise ServiceError(
            f"{binary} is not installed; install the Debian package '{package}' "
            f"(sudo apt-get install -y {package}) and run the command again"
        )
    logger.info("installing Debian package %s", package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True, env=env
    )
    found = shutil.which(binary)
    if not found:
        raise ServiceError(f"installed {package} but {binary} is still not on PATH")
    return found
