"""Where `serve` publishes (`[publish] to`): `dynamodb://TABLE` (table.py, publish.py) for the Lambda
handler, `s3://BUCKET/PREFIX` (bucket.py) for static hosting of the dashboard and of the charts that
take no parameters. Checked here without boto3, so that the settings can be validated anywhere."""

from __future__ import annotations

import re

from pisa_pulse.aws.table import table_of
from pisa_pulse.errors import PisaPulseError

BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket_of(url: str) -> tuple[str, str]:
    """The bucket and key prefix ('' or ending in '/') of `s3://BUCKET/PREFIX`, checked."""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not BUCKET_NAME.fullmatch(bucket) or prefix.startswith("/") or "//" in prefix:
        raise PisaPulseError(
            f"publish.to {url!r} is not s3://BUCKET/PREFIX",
            "write it as s3://my-bucket/dashboard (a bucket name of 3 to 63 lower-case letters, digits, "
            "'.' or '-'; the prefix optional)",
        )
    return bucket, (prefix.rstrip("/") + "/") if prefix.strip("/") else ""


def target_of(url: str) -> str:
    """`url` if it is a publish target this version knows (dynamodb:// or s3://), checked."""
    if url.startswith("s3://"):
        bucket_of(url)
    elif url.startswith("dynamodb://"):
        table_of(url)
    else:
        raise PisaPulseError(
            f"publish.to {url!r} is neither dynamodb://TABLE nor s3://BUCKET/PREFIX",
            'write e.g. to = ["dynamodb://pisa-pulse-charts", "s3://my-bucket/dashboard"]',
        )
    return url
