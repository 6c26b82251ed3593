"""Download stage: fetch every archive in params `data.archives` into <data.root>/raw, verify it, and unpack it
into <data.root>/extracted (so VOC lands at <data.root>/extracted/VOCdevkit/VOC2007/...).

Run: python -m pipelines.download [--params params.yaml]
Exit status: 0 done; 2 a problem to fix (params, md5, a hostile archive); 75 every mirror failed for a network
reason (worth retrying); 130 interrupted (Ctrl-C), after saying which partial download was kept for resuming.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipelines.params import DEFAULT_PATH, load_params
from yolov1.config import ConfigError, Params
from yolov1.download import ArchiveError, DownloadError, fetch_archive_result, is_extracted, safe_extract
from yolov1.redact import redact

EXIT_NETWORK = 75  # sysexits.h EX_TEMPFAIL: a later try may succeed


def run(params: Params, *, show_progress: bool = False) -> dict[str, Any]:
    """Fetch, verify and extract each archive; returns a JSON-able summary (one entry per archive).

    Relative paths (`data.root`, an archive's `local`) are relative to the working directory. Raises
    `yolov1.download.DownloadError` / `UnsafeArchiveError` (both `ArchiveError`) on failures the user can fix.
    """
    root = Path(params.data.root)
    raw_dir, extracted_dir = root / "raw", root / "extracted"
    archives = []
    for archive in params.data.archives:
        bar = _Bar(archive.filename, enabled=show_progress)
        try:
            fetched = fetch_archive_result(archive, raw_dir, progress=bar)
        finally:
            bar.close()
        skip = is_extracted(fetched.path, extracted_dir, fetched.md5)
        names = safe_extract(fetched.path, extracted_dir, md5=fetched.md5)
        archives.append({
            "name": archive.name, "path": str(fetched.path), "md5": fetched.md5, "bytes": fetched.bytes,
            "source": fetched.source, "action": fetched.action, "extracted": not skip, "members": len(names),
        })
    return {"raw_dir": str(raw_dir), "extracted_dir": str(extracted_dir), "archives": archives}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="yolov1 download",
        description="Fetch the PASCAL VOC archives listed in params.yaml (data.archives): a `local` copy if set, "
        "else <data.root>/raw/<filename> if it verifies, else each mirror in order with resumable downloads. "
        "Every archive is checked against its size and md5, then safely extracted into <data.root>/extracted.",
    )
    parser.add_argument("--params", default=str(DEFAULT_PATH), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
    except ConfigError as err:
        print(f"error: {redact(err)}", file=sys.stderr)
        return 2
    try:
        summary = run(params, show_progress=True)
    except KeyboardInterrupt:
        print(_interrupted(Path(params.data.root) / "raw"), file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except (ArchiveError, ConfigError) as err:
        print(f"error: {redact(err)}", file=sys.stderr)
        # 75 (EX_TEMPFAIL): every mirror failed for a network reason, so the flow's download task retries;
        # anything else (bad params, md5, hostile archive) is deterministic and fails at once.
        return EXIT_NETWORK if isinstance(err, DownloadError) and err.transient else 2
    for a in summary["archives"]:
        extracted = f"extracted {a['members']} members" if a["extracted"] else "already extracted"
        print(f"{a['name']}: {a['action']} {a['path']} ({a['bytes']} bytes, from {redact(a['source'])}); {extracted}")
    return 0


def _interrupted(raw_dir: Path) -> str:
    """What an interrupted run kept, and how to go on."""
    parts = sorted(raw_dir.glob("*.part")) if raw_dir.is_dir() else []
    done = sorted(p.name for p in raw_dir.iterdir() if p.is_file() and p.suffix not in (".part", ".invalid")) \
        if raw_dir.is_dir() else []
    lines = ["interrupted."]
    lines += [f"  kept the partial download {p} ({p.stat().st_size} bytes): the next run resumes it" for p in parts]
    if done:
        lines.append(f"  kept the verified archives in {raw_dir}: {', '.join(done)}")
    lines.append("  any extraction in progress was rolled back (its staging folder removed) and is redone next time.")
    lines.append("  Run the download stage again to continue.")
    return "\n".join(lines)


class _Bar:
    """A tqdm byte counter fed by the download's progress callback, opened only once bytes actually move."""

    def __init__(self, desc: str, enabled: bool):
        self.desc, self.enabled, self.bar, self.last = desc, enabled, None, 0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(desc=self.desc, total=total, initial=done, unit="B", unit_scale=True,
                            unit_divisor=1024, dynamic_ncols=True)
            self.last = done
        elif done < self.last:  # a mirror restarted from byte 0
            self.bar.reset(total=total)
            self.bar.update(done)
        else:
            self.bar.update(done - self.last)
        self.last = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    raise SystemExit(main())
