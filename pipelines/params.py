"""Read params.yaml (the one source of configuration) into `yolov1.config.Params`."""

from __future__ import annotations

from pathlib import Path

import yaml

from yolov1.config import ConfigError, Params, params_from_dict

DEFAULT_PATH = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PATH) -> Params:
    """Load and validate a params file; errors name the file and the key path at fault."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return params_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
