"""`make run` preflight: fail in seconds, not hours, when real PASCAL VOC or a GPU cannot be had.

For every archive in ``data.archives`` it is enough that one of these holds: ``local`` points at a file, the
verified tarball is already in ``<data.root>/raw``, or a mirror answers a HEAD request. Without a GPU the paper
profile would take weeks: that is an error too unless ``--allow-cpu`` is given.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.params import load_params
from yolov1.config import ArchiveConfig, ConfigError


def archive_available(archive: ArchiveConfig, raw_dir: Path, timeout: float) -> tuple[bool, list[str]]:
    """(available, what was tried and why it failed)."""
    tried = []
    if archive.local:
        if Path(archive.local).is_file():
            return True, tried
        tried.append(f"local {archive.local}: no such file")
    if (raw_dir / archive.filename).is_file():
        return True, tried
    for url in archive.mirrors:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if resp.status == 200:
                    return True, tried
                tried.append(f"{url}: HTTP {resp.status}")
        except (urllib.error.URLError, OSError, ValueError) as err:  # ValueError: not a URL urllib can open
            tried.append(f"{url}: {getattr(err, 'reason', err)}")
    return False, tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--allow-cpu", action="store_true", help="do not require a GPU")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per mirror (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = []
    raw_dir = Path(params.data.root) / "raw"
    for i, archive in enumerate(params.data.archives):
        ok, tried = archive_available(archive, raw_dir, args.timeout)
        if not ok:
            problems.append(f"{archive.filename} cannot be had:\n    " + "\n    ".join(tried) +
                            f"\n  -> put the tarball at {raw_dir / archive.filename} or set "
                            f"data.archives[{i}].local: /path/to/{archive.filename} in {args.params}")
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        problems.append("no CUDA GPU: the paper profile (448 px, 135 epochs on VOC 07+12) needs one "
                        "(pass --allow-cpu to go on anyway)")
    if problems:
        print("make run cannot start:\n- " + "\n- ".join(problems), file=sys.stderr)
        print("\nTo see the whole pipeline work without VOC or a GPU, run `make demo`.", file=sys.stderr)
        return 2
    print("preflight: every archive is available" + ("" if torch.cuda.is_available() else " (CPU only)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
