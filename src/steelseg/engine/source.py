"""What an archive job reads: a folder tree, a glob, or a manifest (a text file of paths, one per line, or a
Parquet file's ``path`` column), each item an (image id, location) pair. Locations with a scheme
(``s3://``, ``gs://``, ``hdfs://``, ``file://``) are read through pyarrow's file systems where installed."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from steelseg.data.images import IMAGE_EXTS, list_images
from steelseg.errors import DataError

__all__ = ["Item", "list_source", "read_bytes", "source_root"]

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


@dataclass(frozen=True)
class Item:
    image_id: str  # the path under the source root (with /), or the manifest's line
    uri: str  # a local path or a URI pyarrow can open


def _is_uri(s: str) -> bool:
    return "://" in s


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def source_root(source: str) -> Path | None:
    """The local folder a source lives in (a glob's fixed part, a manifest's folder): outputs must stay out."""
    if _is_uri(source):
        return None
    if _is_glob(source):
        fixed = Path(source.split("*")[0].split("?")[0].split("[")[0])
        return fixed if source.endswith(("/", "\\")) or fixed.is_dir() else fixed.parent
    p = Path(source)
    return p if p.is_dir() else p.parent


def _from_manifest(path: Path) -> list[Item]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise DataError(f"{path}: a Parquet manifest needs a 'path' column (it has {table.column_names})")
        lines = [str(v) for v in table.column("path").to_pylist() if v]
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if lines and lines[0].lower() in ("path", "image", "uri"):  # a one-column CSV's header
            lines = lines[1:]
    items = []
    for ln in lines:
        uri = ln if _is_uri(ln) or Path(ln).is_absolute() else str(path.parent / ln)
        items.append(Item(ln, uri))
    return items


def list_source(source: str) -> list[Item]:
    """Every image of ``source``, sorted by id; an error that says what was looked for when there is none."""
    if _is_uri(source):
        items = _from_uri_dir(source)
    elif _is_glob(source):
        root = source_root(source)
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_EXTS and Path(p).is_file())
        items = [Item(p.relative_to(root).as_posix() if root and p.is_relative_to(root) else str(p), str(p))
                 for p in paths]
    elif Path(source).is_dir():
        images, _ = list_images(source, recursive=True)
        items = [Item(p.relative_to(source).as_posix(), str(p)) for p in images]
    elif Path(source).is_file() and Path(source).suffix.lower() in MANIFEST_SUFFIXES:
        items = _from_manifest(Path(source))
    else:
        raise DataError(f"{source}: not a folder, a glob, a manifest ({', '.join(MANIFEST_SUFFIXES)}) or a URI")
    if not items:
        raise DataError(f"{source}: no images (looked for {', '.join(IMAGE_EXTS)})")
    ids = [i.image_id for i in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: the image id {dup!r} appears twice; every image must be listed once")
    return sorted(items, key=lambda i: i.image_id)


def _from_uri_dir(uri: str) -> list[Item]:
    fs, base = _filesystem(uri)
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    scheme = uri.split("://", 1)[0]
    return [Item(i.path[len(base):].lstrip("/"), f"{scheme}://{i.path}") for i in infos
            if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_EXTS
            and not any(part.startswith(".") for part in Path(i.path[len(base):]).parts)]


def _filesystem(uri: str):  # noqa: ANN202 - pyarrow types stay lazy
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise DataError(f"{uri}: reading URIs needs pyarrow (pip install 'steelseg[ray]')") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors name the scheme and what is missing
        raise DataError(f"{uri}: {exc}") from None


def read_bytes(uri: str) -> bytes:
    """The file's bytes, from a local path or a URI."""
    if not _is_uri(uri):
        return Path(uri).read_bytes()
    fs, path = _filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()
