"""An HTML page template for `dvc plots show` that renders with no network: Vega, Vega-Lite and Vega-Embed inlined.

DVC's default page loads those three scripts from a CDN, so offline (or behind a proxy) it shows the PNGs and
nothing else. This template carries the scripts itself, from the `vl-convert-python` package (pinned in
pyproject.toml, so the bundle is the same on every install). It omits DVC's ``{scripts}`` placeholder, the one DVC
fills with the CDN ``<script src=...>`` tags, and keeps ``{plot_divs}``.

    python -m pipelines.plots_html                       # writes .dvc/plots-offline.html, sets plots.html_template
    dvc plots show                                       # now uses it (or: --html-template .dvc/plots-offline.html)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE_NAME = "plots-offline.html"  # inside the repo's .dvc/ folder (plots.html_template is relative to it)
VEGA_LITE_VERSION = "5.20"  # DVC's templates declare the Vega-Lite v5 schema

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <!-- {stamp} -->
    {refresh_tag}
    <title>DVC plots</title>
    <script type="text/javascript">
(function () {{
{bundle}
}})();
    </script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    """The page: DVC's placeholders ``{plot_divs}`` and ``{refresh_tag}``, and the inlined script bundle."""
    import vl_convert as vlc

    # The bundle sets window.vegaEmbed / vega / vegaLite; the function wrapper keeps its top-level names out of
    # the page's global scope, where DVC's per-plot scripts declare `var spec`.
    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    if "</script" in bundle.lower():
        raise RuntimeError("the Vega bundle contains '</script' and cannot be inlined")
    stamp = (f"vl-convert {vlc.__version__}: vega {vlc.get_vega_version()}, vega-lite {VEGA_LITE_VERSION}, "
             f"vega-embed {vlc.get_vega_embed_version()}")
    # str.format would trip on the bundle's braces: fill the placeholders by replacement instead.
    page = PAGE.replace("{{", "{").replace("}}", "}")
    return page.replace("{stamp}", stamp).replace("{bundle}", bundle)


def install(repo: Path) -> Path:
    """Write the template into `repo`/.dvc (atomically) and make it the repo's default; returns its path."""
    repo = Path(repo).resolve()
    path = repo / ".dvc" / TEMPLATE_NAME
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(offline_template())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # --local: a machine-specific setting (the file is generated, not committed), kept out of .dvc/config.
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", TEMPLATE_NAME],
                   cwd=repo, check=True, capture_output=True, text=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.plots_html", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repo (default: the current folder)")
    args = parser.parse_args(argv)
    if not (args.repo / ".dvc").is_dir():
        print(f"plots_html: error: {args.repo.resolve()} is not a DVC repo (no .dvc folder)", file=sys.stderr)
        return 2
    path = install(args.repo)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB); `dvc plots show` now renders offline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
