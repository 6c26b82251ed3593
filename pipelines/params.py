"""Read params.yaml (the one source of configuration) into `yolov1.config.Params`.

The YAML is parsed with a safe loader that also refuses anchors and aliases: params files never need them, and
a 2 KB alias bomb ("billion laughs") would otherwise expand to gigabytes before any key is checked.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from yolov1.config import ConfigError, Params, params_from_dict

DEFAULT_PATH = Path("params.yaml")
MAX_BYTES = 1 << 20  # a params file is a few KB; anything near a megabyte is not one


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that stops at the first anchor (``&a``) or alias (``*a``), before anything is expanded."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise yaml.YAMLError(
                f"line {mark.line + 1}, column {mark.column + 1}: YAML {kind} {str(event.anchor)[:40]!r} "
                "is not allowed in a params file (write the value out)"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str = "<string>") -> object:
    """Parse YAML without anchors/aliases; raises `ConfigError` naming `source` and the line."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err)[:500]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None


def load_params(path: str | Path = DEFAULT_PATH) -> Params:
    """Load and validate a params file; errors name the file and the key path at fault."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root or pass --params)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes; not a params file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    raw = parse_yaml(text, str(path))
    try:
        return params_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
