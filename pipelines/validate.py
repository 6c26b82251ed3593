"""The data-validation gate of the prepare stage: Great Expectations (1.x) checks on the images/objects tables.

`validate_tables` runs one expectation suite per table and returns a `ValidationReport` naming every failed rule
and its offending rows; `check_tables` raises `ValidationError` instead. Image files are opened here, in pandas-land
(`check_image_files`), because GX only sees columns: the result becomes an ``image_status`` column that GX checks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

__all__ = [
    "IMAGE_COLUMNS", "OBJECT_COLUMNS", "ValidationFailure", "ValidationReport", "ValidationError",
    "check_image", "check_image_files", "validate_tables", "check_tables",
]  # fmt: skip

IMAGE_COLUMNS = ("image_id", "split", "year", "path", "width", "height")
OBJECT_COLUMNS = (
    "image_id", "class_name", "class_index", "xmin", "ymin", "xmax", "ymax",
    "xmin_n", "ymin_n", "xmax_n", "ymax_n", "difficult", "truncated",
)  # fmt: skip
IMAGE_OK = "ok"  # the image_status of a present, complete image of the size the table says
MAX_ROWS = 10  # offending rows kept per failure in the report (the JSON result keeps them all)

_JPEG_EOI = b"\xff\xd9"
_GX: dict[str, Any] = {}  # the ephemeral GX context and one batch definition per table, built on first use


@dataclass(frozen=True)
class ValidationFailure:
    """One failed expectation: which table, rule and columns, how many rows, and the first offending rows."""

    table: str
    expectation: str  # the GX expectation type, e.g. "expect_column_values_to_be_in_set"
    rule: str  # the rule in words, e.g. "xmax <= width"
    columns: tuple[str, ...]
    unexpected_count: int
    rows: tuple[dict[str, Any], ...]  # row (0-based position in the table), image_id and the offending values
    detail: str = ""  # what else GX observed: missing set members, an exception message

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "expectation": self.expectation, "rule": self.rule, "columns": list(self.columns),
            "unexpected_count": self.unexpected_count, "rows": list(self.rows), "detail": self.detail,
        }  # fmt: skip

    def describe(self) -> str:
        """One line: ``objects: xmax <= width [xmax, width]: 1 row(s), e.g. row 3 image_id='2007_000005' ...``."""
        text = f"{self.table}: {self.rule} [{', '.join(self.columns)}]"
        if self.unexpected_count:
            shown = "; ".join(" ".join(f"{k}={v!r}" for k, v in r.items()) for r in self.rows)
            text += f": {self.unexpected_count} row(s) fail, e.g. {shown}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of the gate; ``result`` is the full GX result per table (JSON-able), ``failures`` its digest."""

    success: bool
    failures: tuple[ValidationFailure, ...]
    statistics: dict[str, dict[str, Any]]
    result: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success, "failures": [f.to_dict() for f in self.failures],
            "statistics": self.statistics,
        }  # fmt: skip

    def format(self) -> str:
        """A readable multi-line summary: one line per failed rule."""
        if self.success:
            return "data validation passed"
        lines = [f"data validation failed: {len(self.failures)} rule(s) broken"]
        return "\n".join(lines + [f"  - {f.describe()}" for f in self.failures])


class ValidationError(Exception):
    """The tables broke the gate; ``report`` holds every failure, the message lists them one per line."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.format())
        self.report = report


def check_image(path: Path, expected_size: tuple[int, int] | None = None) -> str:
    """``"ok"`` when ``path`` is a present, complete image (of ``expected_size`` = (width, height) pixels, if
    given); otherwise the problem in a few words (``"file missing"``, ``"truncated or corrupt: ..."``, ...).

    The check is fast but sound for truncation: PIL reads the header (size, format); a JPEG is accepted when
    its last bytes (ignoring NUL padding) are the end-of-image marker FF D9. Inside a JPEG's compressed data FF is
    always followed by 00 or a restart code, so a file cut anywhere in the scan cannot end in FF D9. A JPEG
    without the marker, and any other format, is fully decoded, which catches truncation for sure.
    """
    try:
        with Image.open(path) as image:
            size, fmt = image.size, image.format
            if not (fmt == "JPEG" and _ends_with_eoi(path)):
                image.load()  # full decode: raises on truncated or corrupt data
    except FileNotFoundError:
        return "file missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"truncated or corrupt: {exc}"
    if expected_size is not None and tuple(size) != tuple(expected_size):
        return f"size {size[0]}x{size[1]} in the file but {expected_size[0]}x{expected_size[1]} in the table"
    return IMAGE_OK


def check_image_files(
    images: pd.DataFrame, image_root: Path, *, workers: int = 1, progress: bool = False
) -> pd.Series:
    """`check_image` for every row of an images table: a str Series aligned with ``images.index``.

    Each file is ``image_root / images.path`` and must be ``images.width`` x ``images.height`` pixels. With
    ``workers > 1`` the files are checked in a process pool, in contiguous chunks.
    """
    jobs = [
        (str(Path(image_root) / p), (int(w), int(h)))
        for p, w, h in zip(images["path"], images["width"], images["height"], strict=True)
    ]
    if workers <= 1 or len(jobs) < 64:
        statuses = [check_image(Path(p), s) for p, s in _progress(jobs, progress)]
    else:
        chunk = math.ceil(len(jobs) / (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_check_job, jobs, chunksize=chunk)
            statuses = list(_progress(results, progress, total=len(jobs)))
    return pd.Series(statuses, index=images.index, dtype="string", name="image_status")


def validate_tables(
    images: pd.DataFrame,
    objects: pd.DataFrame,
    *,
    classes: Sequence[str],
    image_root: Path | None,
    result_path: Path | None,
    splits: Sequence[str] = ("train", "test"),
    image_status: pd.Series | None = None,
) -> ValidationReport:
    """Run the gate on the prepared tables (schema: `IMAGE_COLUMNS`, `OBJECT_COLUMNS`; boxes in 0-based pixels).

    Rules: unique image ids; every split in ``splits`` present and no other; positive sizes; each image file
    present, complete and of the table's size (``image_status``: computed from ``image_root`` unless given;
    ``image_root=None`` and no status skips the file rule); every object's image in the images table; class names
    in ``classes`` with the matching ``class_index``; 0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height;
    normalised corners in [0, 1]; difficult and truncated in {0, 1}. The full GX result JSON is written
    atomically to ``result_path`` when given. Raises `ValueError` if a table lacks a schema column.
    """
    for name, table, columns in (("images", images, IMAGE_COLUMNS), ("objects", objects, OBJECT_COLUMNS)):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}")
    images_v = images.reset_index(drop=True).assign(row=lambda t: range(len(t)))
    if image_status is None and image_root is not None:
        image_status = check_image_files(images, image_root)
    if image_status is not None:
        images_v["image_status"] = list(image_status)
    sizes = images.drop_duplicates("image_id").set_index("image_id")[["width", "height"]]
    objects_v = objects.reset_index(drop=True).assign(row=lambda t: range(len(t)))
    objects_v = objects_v.join(sizes, on="image_id")  # NaN width/height: the object's image is not in the table
    objects_v["has_image"] = objects_v["image_id"].isin(sizes.index)

    results = {
        "images": _run("images", images_v, _image_rules(splits, "image_status" in images_v)),
        "objects": _run("objects", objects_v, _object_rules(classes)),
    }
    failures = tuple(f for name, res in results.items() for f in _failures(name, res))
    report = ValidationReport(
        success=all(r["success"] for r in results.values()),
        failures=failures,
        statistics={name: res["statistics"] for name, res in results.items()},
        result={"success": all(r["success"] for r in results.values()), **results},
    )
    if result_path is not None:
        _write_json(Path(result_path), report.result)
    return report


def check_tables(
    images: pd.DataFrame,
    objects: pd.DataFrame,
    *,
    classes: Sequence[str],
    image_root: Path | None,
    result_path: Path | None,
    splits: Sequence[str] = ("train", "test"),
    image_status: pd.Series | None = None,
) -> ValidationReport:
    """`validate_tables`, raising `ValidationError` (one line per broken rule) when any rule fails."""
    report = validate_tables(
        images, objects, classes=classes, image_root=image_root, result_path=result_path, splits=splits,
        image_status=image_status,
    )  # fmt: skip
    if not report.success:
        raise ValidationError(report)
    return report


def _image_rules(splits: Sequence[str], with_files: bool) -> list[Any]:
    from great_expectations import expectations as gxe

    rules = [
        gxe.ExpectColumnValuesToBeUnique(column="image_id", meta={"rule": "image ids are unique"}),
        gxe.ExpectColumnValuesToNotBeNull(column="image_id", meta={"rule": "image id present"}),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(splits), meta={"rule": f"split in {list(splits)}"}),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=list(splits), meta={"rule": f"every split of {list(splits)} has images"}
        ),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=0, strict_min=True, meta={"rule": "width > 0"}),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=0, strict_min=True, meta={"rule": "height > 0"}),
    ]
    if with_files:
        rules.append(gxe.ExpectColumnValuesToBeInSet(
            column="image_status", value_set=[IMAGE_OK], meta={"rule": "image file present, complete, of this size"}
        ))  # fmt: skip
    return rules


def _object_rules(classes: Sequence[str]) -> list[Any]:
    from great_expectations import expectations as gxe

    def greater(a: str, b: str, or_equal: bool = False) -> Any:
        rule = f"{b} {'<=' if or_equal else '<'} {a}"
        return gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=a, column_B=b, or_equal=or_equal, ignore_row_if="either_value_is_missing", meta={"rule": rule}
        )

    rules = [
        gxe.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True], meta={"rule": "image_id in images"}),
        gxe.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(classes), meta={"rule": "known class"}),
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="class_name", column_B="class_index", value_pairs_set=[(c, i) for i, c in enumerate(classes)],
            meta={"rule": "class_index is the position of class_name in the classes"},
        ),
        gxe.ExpectColumnValuesToBeBetween(column="xmin", min_value=0, meta={"rule": "0 <= xmin"}),
        gxe.ExpectColumnValuesToBeBetween(column="ymin", min_value=0, meta={"rule": "0 <= ymin"}),
        greater("xmax", "xmin"), greater("ymax", "ymin"),
        greater("width", "xmax", or_equal=True), greater("height", "ymax", or_equal=True),
    ]
    for column in ("xmin_n", "ymin_n", "xmax_n", "ymax_n"):
        rules.append(gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=0, max_value=1, meta={"rule": f"0 <= {column} <= 1"}
        ))  # fmt: skip
    for column in ("difficult", "truncated"):
        rules.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[0, 1], meta={"rule": f"{column} in {{0, 1}}"}))
    return rules


def _run(table: str, frame: pd.DataFrame, rules: list[Any]) -> dict[str, Any]:
    """Validate ``frame`` against ``rules`` through a ValidationDefinition; the GX result as a JSON dict."""
    import great_expectations as gx

    context, batch_definition = _context(table)
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"prepare-{table}", expectations=rules))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"prepare-{table}", data=batch_definition, suite=suite)
    )
    result = validation.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row", "image_id"]},
    )
    return result.to_json_dict()


def _context(table: str) -> tuple[Any, Any]:
    """The module's ephemeral GX context (built once: the setup costs more than validating) and a table's batch."""
    if not _GX:
        import great_expectations as gx
        from great_expectations.data_context.types.base import DataContextConfig as Config
        from great_expectations.data_context.types.base import InMemoryStoreBackendDefaults as InMemory
        from great_expectations.data_context.types.base import ProgressBarsConfig as Bars

        config = Config(store_backend_defaults=InMemory(), analytics_enabled=False, progress_bars=Bars(globally=False))
        context = gx.get_context(mode="ephemeral", project_config=config)
        source = context.data_sources.add_pandas("prepared")
        _GX["context"] = context
        for name in ("images", "objects"):
            _GX[name] = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    return _GX["context"], _GX[table]


def _failures(table: str, result: dict[str, Any]) -> list[ValidationFailure]:
    failures = []
    for item in result["results"]:
        if item["success"]:
            continue
        config, outcome = item["expectation_config"], item.get("result") or {}
        kwargs = config["kwargs"]
        columns = tuple(kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs)
        rows = tuple(_plain_row(r, columns) for r in (outcome.get("unexpected_index_list") or [])[:MAX_ROWS])
        detail = ""
        if outcome.get("partial_missing_list"):
            detail = f"missing values: {outcome['partial_missing_list']}"
        exception = item.get("exception_info") or {}
        messages = [exception.get("exception_message")] + [
            v.get("exception_message") for v in exception.values() if isinstance(v, dict)
        ]  # fmt: skip
        messages = [m for m in messages if m]
        if messages:
            detail = f"GX raised: {messages[0]}"
        failures.append(ValidationFailure(
            table=table, expectation=config["type"], rule=(config.get("meta") or {}).get("rule", config["type"]),
            columns=columns, unexpected_count=int(outcome.get("unexpected_count") or 0), rows=rows, detail=detail,
        ))  # fmt: skip
    return failures


def _plain_row(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """The row's position and image id first, then the offending values, as plain Python values."""
    keys = ["row", "image_id", *[c for c in columns if c not in ("row", "image_id")]]
    return {k: _plain(row.get(k)) for k in keys if k in row}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _write_json(path: Path, payload: Any) -> None:
    from yolov1.io import atomic_write_text

    # Unique temp name and 0666 less the umask (mkstemp's 0600 would stick to validation.json).
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))


def _ends_with_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        tail = f.read()
    return tail.rstrip(b"\x00").endswith(_JPEG_EOI)


def _check_job(job: tuple[str, tuple[int, int]]) -> str:
    return check_image(Path(job[0]), job[1])


def _progress(items: Any, enabled: bool, total: int | None = None) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="check images", unit="img", dynamic_ncols=True)
