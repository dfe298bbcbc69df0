"""The Lambda function's code, slim: `python -m pisa_pulse.aws.package build/lambda` (`make lambda`).

The package is this project's own Python code (and its bytecode) and the PISA data the charts name
countries from,
without the dashboard's files and without any dependency: the handler imports nothing but the
standard library and, at its first request, boto3, which Lambda's Python runtime provides. So
the function ships about half a megabyte zipped instead of the hundred or so megabytes of numpy,
psycopg2 and the web server that `pip install .` brings (docs/benchmarks.md measures both), and
its import stays short. The direct handler needs psycopg2: deploy it from a full install instead.
deploy/template.yaml's `CodeUri` points at the folder this writes; `sam build` zips it.
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pisa_pulse

LEFT_OUT = ("web/static",)  # the dashboard's files: served by serve or S3, never by the function


def source_root() -> Path:
    """The folder of the installed `pisa_pulse` package."""
    return Path(pisa_pulse.__file__).parent


def files(root: Path) -> list[Path]:
    """The package's files that go into the function, relative to `root`."""
    kept = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if any(relative.as_posix().startswith(prefix + "/") for prefix in LEFT_OUT):
            continue
        kept.append(relative)
    return kept


def build(out: Path) -> tuple[Path, int, int]:
    """Write the package to `out/` (replaced) and `out.zip`; return the zip's path, the unzipped and
    the zipped size in bytes."""
    root = source_root()
    if out.exists():
        shutil.rmtree(out)
    target = out / "pisa_pulse"
    target.mkdir(parents=True)
    archive = out.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for relative in files(root):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, target / relative)
            zipped.write(root / relative, f"pisa_pulse/{relative.as_posix()}")
        # Bytecode too: Lambda's code folder is read-only, so without it every cold start compiles
        # our modules (40-48 ms measured). For the runtime's Python (3.11), as the template says;
        # unchecked hashes, since a zip does not keep the sources' times the checks would compare.
        compileall.compile_dir(
            target, quiet=1, legacy=False, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
        for compiled in sorted(target.rglob("*.pyc")):
            zipped.write(compiled, compiled.relative_to(out).as_posix())
    unzipped = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    return archive, unzipped, archive.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pisa_pulse.aws.package",
        description="Write the Lambda function's slim package (deploy/template.yaml's CodeUri).",
    )
    parser.add_argument("out", type=Path, help="the folder to write (replaced); its .zip goes beside it")
    args = parser.parse_args(argv)
    archive, unzipped, zipped = build(args.out)
    print(f"{args.out}: {unzipped / 1e6:.2f} MB; {archive}: {zipped / 1e6:.2f} MB zipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
