"""Debian packages the set-up installs: what is found is not installed again, and without root
the message names the package to install."""

from __future__ import annotations

import pytest

from skewless.services import apt
from skewless.services.process import ServiceError


def test_a_present_library_or_binary_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("apt-get ran for something present")

    monkeypatch.setattr(apt, "_apt", refuse)
    apt.ensure_library("c", "libc6")
    assert apt.ensure_package("sh", "dash").endswith("/sh")


def test_a_missing_library_without_root_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apt.os, "geteuid", lambda: 1000)
    with pytest.raises(ServiceError, match=r"libnot-a-library .*'libnothing1'.*apt-get install"):
        apt.ensure_library("not-a-library", "libnothing1")
