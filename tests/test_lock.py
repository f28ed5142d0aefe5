"""The lock (requirements/*.lock, made by scripts/lock.sh): it covers what pyproject.toml asks for, within its
ranges, the two files agree, and the environment the suite runs in was installed from it."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.lock import OPTIONAL_BUILD, ROOT, canonical, no_deps, project_requirements, read_lock

LOCK_DIR = Path(os.environ.get("UNIVERSAL_RUNTIME_LOCK_DIR") or ROOT / "requirements")


@pytest.mark.parametrize("mode", ["server", "test"])
def test_the_lock_pins_every_requirement_of_pyproject_within_its_range(mode: str) -> None:
    pins = read_lock(LOCK_DIR / f"{mode}.lock")
    for text in [*project_requirements(mode), *no_deps(mode)]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonical(req.name)
        assert name in pins, f"{mode}.lock lacks {text}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{mode}.lock has {name}=={pins[name]}, " \
                                                                      f"outside {text}"


def test_the_server_lock_is_the_test_lock_without_the_test_tools() -> None:
    server, test = read_lock(LOCK_DIR / "server.lock"), read_lock(LOCK_DIR / "test.lock")
    assert {name: test.get(name) for name in server} == server
    assert {"pytest", "openai"} <= set(test) - set(server)


def test_this_environment_was_installed_from_the_lock() -> None:
    """`scripts/setup.sh test` installs exactly the locked versions (torch's local `+cpu` label aside); a
    package the lock marks `optional-build` may be missing (its build failed), never at another version."""
    pins = read_lock(LOCK_DIR / "test.lock")
    installed: dict[str, str] = {}
    for d in metadata.distributions():  # the first on sys.path wins, as for imports: copies vendored by
        # setuptools (setuptools/_vendor, put on sys.path once torch.compile imports setuptools) come later
        installed.setdefault(canonical(d.metadata["Name"]), d.version.split("+")[0])
    for name in OPTIONAL_BUILD:
        if canonical(name) not in installed:
            pins.pop(canonical(name))
    assert {name: installed.get(name) for name in pins} == pins
