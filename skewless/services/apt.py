"""Debian packages the platform needs, installed by the set-up when missing."""

from __future__ import annotations

import ctypes.util
import logging
import os
import shutil
import subprocess

from skewless.services.process import ServiceError

logger = logging.getLogger(__name__)
apt_output = logging.getLogger("apt-get")
"""apt-get's own output: not one of our packages, so the log file has it and the console not."""


def ensure_package(binary: str, package: str) -> str:
    """Path of `binary`; installs Debian's `package` when root, else says what to install."""
    found = shutil.which(binary)
    if found:
        return found
    _install(package, binary)
    found = shutil.which(binary)
    if not found:
        raise ServiceError(f"installed {package} but {binary} is still not on PATH")
    return found


def ensure_library(name: str, package: str) -> None:
    """Installs Debian's `package` when the shared library `lib<name>` is missing (as
    `ctypes.util.find_library` looks it up), as `ensure_package` does for a binary."""
    if ctypes.util.find_library(name):
        return
    _install(package, f"lib{name}")
    if not ctypes.util.find_library(name):
        raise ServiceError(f"installed {package} but lib{name} is still not found")


def _install(package: str, missing: str) -> None:
    if os.geteuid() != 0:
        raise ServiceError(
            f"{missing} is not installed; install the Debian package '{package}' "
            f"(sudo apt-get install -y {package}) and run the command again"
        )
    logger.info("installing Debian package %s (apt-get; its output goes to the log file)", package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _apt(["apt-get", "update", "-q"], env)
    _apt(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env)


def _apt(argv: list[str], env: dict[str, str]) -> None:
    """Run apt-get with its output in the log file; a failure raises with the output's tail."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    apt_output.info("%s:\n%s%s", " ".join(argv), result.stdout, result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ServiceError(f"{' '.join(argv)} failed (exit {result.returncode}):\n{tail}")
