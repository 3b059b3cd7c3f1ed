"""The build's one addition to pyproject.toml: the files an installed `pgw` needs that live outside the packages.

The example policies (``policies/*.toml``) go into the wheel as ``gateway/shipped/policies/`` and the ``.proto``
files next to the stubs generated from them (``privacy_gateway/v1/*.proto``); `gateway.assets` finds them there.
An editable install reads them from the checkout instead."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = (
    (HERE / "policies", "*.toml", Path("gateway", "shipped", "policies")),
    (HERE / "proto" / "privacy_gateway" / "v1", "*.proto", Path("privacy_gateway", "v1")),
)


class BuildWithShippedFiles(build_py):
    """build_py, then the example policies and the .proto files copied into the built packages."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, pattern, target in SHIPPED:
            out = Path(self.build_lib) / target
            out.mkdir(parents=True, exist_ok=True)
            for file in sorted(source.glob(pattern)):
                shutil.copyfile(file, out / file.name)


setup(cmdclass={"build_py": BuildWithShippedFiles})
