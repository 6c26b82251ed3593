"""`make run` preflight: fail in seconds, not hours, when real PASCAL VOC or a GPU cannot be had.

For every archive in ``data.archives`` it is enough that one of these holds: ``local`` points at a file of the
declared size, the tarball is already in ``<data.root>/raw``, or a mirror answers (an http(s) HEAD request, or
the file of a file:// / plain-path mirror exists). ``model.pretrained`` is checked too, so a missing or mismatched
weights file fails now and not after the download: a file is read and matched tensor by tensor against the
backbone (built on the meta device, no memory), ``imagenet`` needs torchvision's file in ``$TORCH_HOME`` or its
URL answering. Without a CUDA GPU the paper profile would take weeks: that is an error too, unless
``--allow-cpu`` is given (``make run ALLOW_CPU=1``), e.g. for a smoke run with small params. Mirror URLs are shown
with their credentials masked. Exit status: 0 ready, 2 not ready (each reason listed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.params import load_params
from yolov1.config import ArchiveConfig, ConfigError
from yolov1.download import probe_source
from yolov1.redact import redact


def archive_available(archive: ArchiveConfig, raw_dir: Path, timeout: float) -> tuple[bool, list[str]]:
    """(available, what was tried and why it failed); sources are tried in `fetch_archive`'s order."""
    tried = []
    if archive.local:
        local = Path(archive.local).expanduser()
        if not local.is_file():
            tried.append(f"local {local}: no such file")
        elif archive.size is not None and local.stat().st_size != archive.size:
            tried.append(f"local {local}: size is {local.stat().st_size} bytes, expected {archive.size}")
        else:
            return True, tried
    if (raw_dir / archive.filename).is_file():
        return True, tried
    for url in archive.mirrors:
        why = probe_source(url, timeout=timeout)
        if why is None:
            return True, tried
        tried.append(why)
    if not archive.mirrors and not archive.local:
        tried.append("the entry lists no local file and no mirrors")
    return False, tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="do not require a CUDA GPU (a CPU smoke run; `make run ALLOW_CPU=1` passes it)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per mirror (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        params = load_params(args.params)
    except ConfigError as err:
        print(f"error: {redact(err)}", file=sys.stderr)
        return 2
    problems = []
    raw_dir = Path(params.data.root) / "raw"
    for i, archive in enumerate(params.data.archives):
        ok, tried = archive_available(archive, raw_dir, args.timeout)
        if not ok:
            problems.append(f"{archive.filename} cannot be had:\n    " + "\n    ".join(tried) +
                            f"\n  -> put the tarball at {raw_dir / archive.filename} or set "
                            f"data.archives[{i}].local: /path/to/{archive.filename} in {args.params}")
    pretrained = _check_pretrained(params, args.timeout, problems)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        problems.append("no CUDA GPU: the paper profile (448 px, 135 epochs on VOC 07+12) needs one. For a CPU "
                        "smoke run, pass --allow-cpu (`make run ALLOW_CPU=1`) with small params")
    if problems:
        print("make run cannot start:\n- " + "\n- ".join(problems), file=sys.stderr)
        print("\nTo see the whole pipeline work without VOC or a GPU, run `make demo`.", file=sys.stderr)
        return 2
    print("preflight: every archive is available" + ("" if cuda else " (CPU only: --allow-cpu)") + f"; {pretrained}")
    return 0


def _check_pretrained(params, timeout: float, problems: list[str]) -> str:
    """What `yolov1.model.check_pretrained` found (appended to `problems` when it cannot be had or does not fit)."""
    from yolov1.backbones import PretrainedWeightsError
    from yolov1.model import check_pretrained

    try:
        return check_pretrained(params.model, probe=lambda url: probe_source(url, timeout=timeout))
    except PretrainedWeightsError as err:
        problems.append(redact(str(err)))
        return "model.pretrained: not usable"


if __name__ == "__main__":
    raise SystemExit(main())
