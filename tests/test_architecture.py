"""The library stays pure: importing every yolov1 module loads none of the pipeline tools."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import yolov1

FORBIDDEN = ("prefect", "mlflow", "dvc", "great_expectations", "yaml")


def test_library_imports_no_pipeline_tools():
    modules = [f"yolov1.{m.name}" for m in pkgutil.iter_modules(yolov1.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(yolov1.__file__).parents[1])
    assert out.stdout.strip() == "", f"yolov1 imported {out.stdout.strip()}"
    assert len(modules) >= 2


def test_source_has_no_forbidden_imports():
    for path in Path(yolov1.__file__).parent.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            for name in FORBIDDEN:
                assert not stripped.startswith((f"import {name}", f"from {name}")), f"{path}: {line}"
