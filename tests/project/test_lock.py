"""The development environment is installed from `requirements/dev.lock`: it must still satisfy pyproject.toml.

`make install` installs the lock with `--require-hashes --no-deps`, so a requirement the lock does not
pin (or pins outside its range) would be missing or wrong at run time. `make lock` re-resolves it.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.settings import ROOT

LOCK = ROOT / "requirements" / "dev.lock"


def _pins() -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] of every `name==version [; marker]` line of the lock."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if m:
            pins.setdefault(canonicalize_name(m[1]), []).append((m[2], (m[3] or "").strip()))
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    raw += [line.split("#")[0].strip() for line in (ROOT / "requirements" / "build.in").read_text().splitlines()]
    return [Requirement(r) for r in raw if r]


def test_every_line_of_the_lock_is_pinned_with_hashes() -> None:
    """Every package line pins one version and is followed by at least one sha256 hash."""
    lines = LOCK.read_text().splitlines()
    packages = [i for i, line in enumerate(lines) if line and not line.startswith((" ", "#"))]
    assert packages, "the lock is empty"
    for i in packages:
        assert "==" in lines[i], lines[i]
        assert lines[i + 1].strip().startswith("--hash=sha256:"), f"no hash after {lines[i]!r}"


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_the_lock_satisfies_pyproject(requirement: Requirement) -> None:
    """Each requirement of pyproject.toml (and the build backend) is pinned in range for Python 3.11."""
    env = default_environment() | {"python_version": "3.11", "python_full_version": "3.11.7"}
    if requirement.marker is not None and not requirement.marker.evaluate(env):
        pytest.skip("not needed here")
    pins = [(v, m) for v, m in _pins().get(canonicalize_name(requirement.name), [])
            if not m or Requirement(f"x; {m}").marker.evaluate(env)]  # type: ignore[union-attr]
    assert len(pins) == 1, f"{requirement.name} is not pinned exactly once in {LOCK.name} (run `make lock`)"
    version = pins[0][0]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{requirement.name}=={version} in {LOCK.name} does not satisfy {requirement} (run `make lock`)")
