"""Optional downloads for online users: atomic, resumable by re-run, checksum-verified."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from components.errors import DataError
from components.io import sha256_of


def fetch(url: str, cache_dir: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` into `cache_dir` once and return the local path.

    The file is written to a temporary name and renamed only when complete, so an interrupted
    download never leaves a truncated file that a later run would trust.
    """
    name = Path(urlparse(url).path).name or "download"
    dest = cache_dir / name
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        if sha256 is not None and sha256_of(Path(tmp)) != sha256:
            raise DataError(url, "downloaded file does not match data.sha256",
                            "check the URL, or update data.sha256 if the upstream file changed")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(url, f"download failed ({getattr(e, 'reason', e)})",
                        "check the URL and the network, or download the file yourself and set data.path") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
