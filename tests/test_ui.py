"""`dvc plots show` as a user sees it: each plot once, the PR curves of all classes on one chart, the loss on a log
axis, and a page that renders with no network - checked by screenshotting it in headless Chromium.

The DVC repo here holds only the project's top-level `plots:` section, its templates and small generated report
files (the CSVs in the format the stages write), so no training is needed. Chromium is Debian's `chromium`
package (.ci/run installs it); without it the browser tests are skipped, never passed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car"]
LOSS_PLOT = "Training loss per image (log scale)"
PR_PLOT = "Test precision-recall per class (area AP method)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def _dvc(repo: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"dvc {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """A DVC repo with the project's plot definitions and report files shaped like the stages' outputs."""
    return _make_repo(tmp_path_factory.mktemp("plots"), charts_only=False)


@pytest.fixture(scope="module")
def charts_repo(tmp_path_factory) -> Path:
    """The same with only the Vega charts declared (`dvc plots show` cannot pick top-level plots by id)."""
    return _make_repo(tmp_path_factory.mktemp("charts"), charts_only=True)


def _make_repo(repo: Path, *, charts_only: bool) -> Path:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    shutil.copytree(ROOT / "dvc_plots", repo / "dvc_plots")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    if charts_only:
        plots = [p for p in plots if isinstance(p, dict)]  # PNG plots are plain paths
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    reports = repo / "reports"
    reports.mkdir()
    rng = np.random.default_rng(0)
    loss = ["step,total,coord,obj,noobj,class"]
    for step in range(10, 310, 10):  # decaying losses over two decades: only a log axis shows them all
        parts = [4.0 * math.exp(-step / 60) * f + 0.01 for f in (1.0, 0.5, 0.3, 0.1, 0.2)]
        loss.append(",".join([str(step)] + [f"{v:.6g}" for v in parts]))
    (reports / "train_loss.csv").write_text("\n".join(loss) + "\n")
    pr = ["class,rank,recall,precision"]
    for c, name in enumerate(CLASSES):  # one curve per class, each ending at a different precision
        for k in range(20):
            recall = (k + 1) / 20
            pr.append(f"{name},{k},{recall:.5f},{1.0 - recall * (0.1 + 0.1 * c) + 0.02 * rng.random():.5f}")
    (reports / "pr.csv").write_text("\n".join(pr) + "\n")
    for name in ("train_loss.png", "pr_curves.png", "predictions.png"):
        Image.new("RGB", (8, 8), (128, 128, 128)).save(reports / name)
    from pipelines.plots_html import install

    install(repo)
    return repo


def test_each_plot_is_shown_once_and_the_charts_carry_the_concepts(plots_repo):
    shown = json.loads(_dvc(plots_repo, "plots", "show", "--json"))["data"]
    assert sorted(shown) == sorted([LOSS_PLOT, PR_PLOT, "reports/train_loss.png", "reports/pr_curves.png",
                                    "reports/predictions.png"])  # no file twice, no per-class plot
    [pr] = shown[PR_PLOT]
    spec = pr["content"]
    assert spec["encoding"]["color"]["field"] == "class"
    assert {row["class"] for row in spec["data"]["values"]} == set(CLASSES)
    [loss] = shown[LOSS_PLOT]
    assert loss["content"]["encoding"]["y"]["scale"]["type"] == "log"
    assert {row["field"] for row in loss["content"]["data"]["values"]} == {"total", "coord", "obj", "noobj", "class"}


def test_the_page_carries_its_scripts(plots_repo, tmp_path):
    _dvc(plots_repo, "plots", "show", "-o", str(tmp_path / "out"))  # the repo's default template: the offline one
    html = (tmp_path / "out" / "index.html").read_text()
    assert "<script src=" not in html and "cdn.jsdelivr.net" not in html
    assert "window.vegaEmbed=" in html and html.count("vegaEmbed('#") == 2


def _screenshot(html: Path, out: Path, tmp_path: Path) -> np.ndarray:
    profile = tmp_path / f"chromium-profile-{out.stem}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host name resolves, a CDN included
           "--hide-scrollbars", "--window-size=1000,1400", "--virtual-time-budget=10000",
           f"--screenshot={out}", html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)  # (H, W, 3)


def _coloured_hues(pixels: np.ndarray) -> int:
    """How many of 24 hue bins hold at least 30 clearly coloured (saturated, not dark) pixels."""
    hi, lo = pixels.max(axis=2), pixels.min(axis=2)
    coloured = (hi - lo > 60) & (hi > 80)
    r, g, b = (pixels[..., i][coloured].astype(float) for i in range(3))
    hue = np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    counts = np.bincount((hue // 15).astype(int), minlength=24)
    return int((counts >= 30).sum())


@needs_chromium
def test_the_charts_render_offline_in_headless_chromium(charts_repo, tmp_path):
    out = tmp_path / "charts"
    _dvc(charts_repo, "plots", "show", "-o", str(out))  # the two Vega charts, no PNGs
    pixels = _screenshot(out / "index.html", tmp_path / "charts.png", tmp_path)
    assert pixels.std() > 10  # not a blank page
    # Seven class curves and five loss components in Vega's categorical palette: many distinct hues. The page
    # has no other colour (no images), so these can only come from drawn charts.
    assert _coloured_hues(pixels) >= 6

    # The control: DVC's own page (scripts from a CDN) under the same offline browser draws no chart at all.
    cdn = tmp_path / "cdn"
    _dvc(charts_repo, "plots", "show", "-o", str(cdn), "--html-template", str(_default_template(tmp_path)))
    control = _screenshot(cdn / "index.html", tmp_path / "cdn.png", tmp_path)
    assert _coloured_hues(control) == 0


def _default_template(tmp_path: Path) -> Path:
    from dvc_render.html import PAGE_HTML

    path = tmp_path / "dvc-default.html"
    path.write_text(PAGE_HTML)
    return path


def test_plots_html_refuses_a_folder_that_is_not_a_dvc_repo(tmp_path, capsys):
    from pipelines.plots_html import main

    assert main(["--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and ".dvc" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_plots_html_help(capsys):
    from pipelines.plots_html import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--repo" in capsys.readouterr().out
