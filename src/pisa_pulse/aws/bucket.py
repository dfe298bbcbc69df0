"""`serve` publishing to S3 (`[publish] to = "s3://BUCKET/PREFIX"`): a static copy of the dashboard
that any S3 website, or CloudFront in front of the bucket, can serve.

Under PREFIX go the dashboard's files (`index.html`, `css/`, `js/`, `vendor/`), the index it builds
itself from (`api`), and the body of every chart as `serve` answers it without parameters
(`api/charts/<chart>`), byte for byte. S3 ignores query strings, so a page hosted there shows every
country and chart 2's default window: for `?countries=` and `?bucket=minute`, point the charts at the
Lambda handler's URL in the page's settings (docs/deploy.md). S3 answers `If-None-Match` with 304 from
its own ETag (the MD5 of the body), so polls of an unchanged chart stay cheap.

Writes: the site's files once at start, only those whose MD5 differs from what the bucket holds
(files the dashboard no longer has are deleted: the prefix belongs to pisa-pulse); then every
interval the chart bodies that changed, at most six writes whatever the change rate (every body
carries its as-of time, so a source that changes at all rewrites them each interval: mind S3's price
per PUT when choosing `publish.interval`). Each chart write is conditional, like the table's: on
the ETag this publisher last saw (`If-Match`; `If-None-Match: *` for a new object); when another
writer got there first, the object's `version` metadata decides: newer than ours and the write is
refused and counted, older and it is overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pisa_pulse.api import charts
from pisa_pulse.api.bodies import ChartCache, Snapshot, json_bytes
from pisa_pulse.api.handlers import index_body
from pisa_pulse.aws.publish import Counted
from pisa_pulse.aws.targets import bucket_of
from pisa_pulse.web import static_dir

log = logging.getLogger(__name__)

JSON = "application/json"
PRECONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def chart_key(name: str) -> str:
    return f"api/charts/{name}"


def md5(body: bytes) -> str:
    """S3's ETag of a body written in one part (without its quotes)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def site_files(root: Path) -> dict[str, Path]:
    """The dashboard's files by their key under the prefix."""
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


class BucketPublisher(Counted):
    """Writes the dashboard and the parameterless chart bodies to one bucket (see the module docstring)."""

    def __init__(self, url: str, client: Any = None, clock: Callable[[], float] = time.time) -> None:
        if client is None:
            import boto3  # here: only a publishing serve needs it

            client = boto3.client("s3")
        super().__init__(url)
        self.bucket, self.prefix = bucket_of(url)
        self.client, self.clock = client, clock
        self.cache = ChartCache()
        self.published: tuple[int, float] = (-1, 0.0)  # the snapshot version and as_of last published
        self.md5s: dict[str, str] = {}  # key -> the MD5 of the body last written, or found at start
        self.etags: dict[str, str] = {}  # key -> the object's ETag as this publisher last saw it
        self.site_written = False

    def publish(self, snap: Snapshot) -> None:
        """The site once, then what changed since the last call (nothing if the snapshot did not)."""
        if not self.site_written:
            self._write_site()
        if (snap.version, snap.as_of) == self.published:
            return
        now = self.clock()
        version = max(int(snap.as_of * 1_000_000), self.version + 1)
        bodies = {"api": json_bytes(index_body(traffic=False))}
        for chart in charts.REGISTRY:
            bodies[chart_key(chart.name)] = self.cache.chart(snap, chart, charts.parse_query(chart, {}, now))[
                0
            ]
        refused = 0
        for key, body in bodies.items():
            if self.md5s.get(key) != md5(body):
                refused += not self._put(key, body, version)
        self.version = version
        if not refused:
            self.published = (snap.version, snap.as_of)

    def _write_site(self) -> None:
        """The dashboard's files that differ from the bucket's; what the bucket holds of the charts is
        taken as written (a restart, a batch run: an unchanged chart is not written again)."""
        files = site_files(static_dir())
        held = self._listing()
        ours = {"api", *(chart_key(chart.name) for chart in charts.REGISTRY)}
        for key in ours & set(held):
            self.md5s[key], self.etags[key] = held[key], f'"{held[key]}"'
        for key, path in files.items():
            body = path.read_bytes()
            if held.get(key) != md5(body):
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.prefix + key,
                    Body=body,
                    ContentType=kind,
                    CacheControl="no-cache",
                )
                self.writes += 1
        for key in sorted(set(held) - set(files) - ours):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
            self.deletes += 1
        self.site_written = True

    def _listing(self) -> dict[str, str]:
        """Every object under the prefix: its key below the prefix and its ETag without quotes."""
        held = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            for found in page.get("Contents", []):
                held[found["Key"].removeprefix(self.prefix)] = found["ETag"].strip('"')
        return held

    def _put(self, key: str, body: bytes, version: int) -> bool:
        """Write one chart body under the version condition; False when a newer one is there."""
        from botocore.exceptions import ClientError

        name = self.prefix + key
        for _ in range(3):  # a condition lost to an older writer: look, and try again on its ETag
            seen = self.etags.get(key)
            condition = {"IfMatch": seen} if seen else {"IfNoneMatch": "*"}
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket,
                    Key=name,
                    Body=body,
                    ContentType=JSON,
                    CacheControl="no-cache",
                    Metadata={"version": str(version)},
                    **condition,
                )
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in PRECONDITION_FAILED:
                    raise
                there = self._version_there(name)
                if there is not None and there[0] >= version:
                    self.refused += 1
                    log.info("s3://%s/%s holds a newer version: a write was refused", self.bucket, name)
                    return False
                self.etags[key] = there[1] if there is not None else ""
                continue
            self.etags[key], self.md5s[key] = answer["ETag"], md5(body)
            self.writes += 1
            return True
        return False

    def _version_there(self, name: str) -> tuple[int, str] | None:
        """The version and ETag of the object `name`, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head.get("Metadata", {}).get("version", "0") or 0), str(head["ETag"])
