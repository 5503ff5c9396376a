"""Fetch MovieLens-100K: the official GroupLens archive, checked against its published SHA-256,
or, where GroupLens cannot be reached, the copy shipped inside the ``recbole==1.2.1`` wheel on
PyPI (downloaded with pip, so any configured index or proxy is honoured)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from app.ingest.errors import FetchError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# Published for the official archive (4,924,029 bytes; GroupLens' own MD5 is
# 0e33842e24a9c977be4e0107933c0723).
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
FALLBACK_REQUIREMENT = "recbole==1.2.1"
FALLBACK_MEMBER_DIR = "recbole/dataset_example/ml-100k"
FALLBACK_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
# The ratings file inside the wheel, as published beside the RecBole atomic files.
FALLBACK_INTER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class FetchResult:
    """Where the data now lies and where it came from."""

    dest: Path
    source: str  # "present", the official URL, or the fallback requirement
    message: str


def already_present(dest: Path) -> bool:
    """Whether ``dest`` holds MovieLens-100K from either source."""
    official = (dest / "u.data").is_file() and (dest / "u.item").is_file()
    fallback = all((dest / name).is_file() for name in FALLBACK_FILES[:2])
    return official or fallback


def fetch_movielens_100k(
    dest: Path,
    *,
    url: str = ML100K_URL,
    sha256: str = ML100K_SHA256,
    timeout: float = CONNECT_TIMEOUT_S,
    fallback: bool = True,
) -> FetchResult:
    """Download MovieLens-100K into ``dest`` unless it is already there.

    The official archive is tried first (failing fast when unreachable); a checksum mismatch is
    an error, never silently replaced by the fallback.
    """
    if already_present(dest):
        return FetchResult(dest, "present", f"MovieLens-100K is already in {dest}; nothing to do")
    try:
        _fetch_official(dest, url, sha256, timeout)
        return FetchResult(dest, url, f"MovieLens-100K fetched from {url} into {dest}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        if not fallback:
            raise FetchError(f"cannot reach {url}: {exc}") from exc
        reason = getattr(exc, "reason", exc)
    _fetch_fallback(dest)
    return FetchResult(
        dest,
        FALLBACK_REQUIREMENT,
        f"{url} is unreachable ({reason}); MovieLens-100K taken from the {FALLBACK_REQUIREMENT} "
        f"wheel on PyPI into {dest} (RecBole atomic files)",
    )


def _fetch_official(dest: Path, url: str, sha256: str, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        _download(url, archive, timeout)
        digest = _sha256(archive)
        if digest != sha256:
            raise FetchError(f"{url}: sha256 {digest} does not match the published {sha256}")
        _unpack(archive, dest)


def _download(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False) as bar:
            while block := response.read(1 << 16):
                out.write(block)
                bar.update(len(block))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _unpack(archive: Path, dest: Path) -> None:
    """Extract the archive's files flat into ``dest`` (its top folder dropped), refusing
    members that would escape it; written to a temporary folder and renamed into place."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) < 2:
                continue
            if any(part in ("..", "") for part in parts) or info.filename.startswith("/"):
                raise FetchError(f"{archive.name}: unsafe member {info.filename!r}")
            target = staging.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
    _move_into_place(staging, dest)


def _move_into_place(staging: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        for item in staging.iterdir():
            item.replace(dest / item.name)
        staging.rmdir()
    else:
        staging.rename(dest)


def _fetch_fallback(dest: Path) -> None:
    """``pip download`` the wheel and take the three atomic files of ml-100k out of it."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--disable-pip-version-check", FALLBACK_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FetchError(
                f"GroupLens is unreachable and pip could not download {FALLBACK_REQUIREMENT}: "
                f"{done.stderr.strip()[-500:]}"
            )
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in FALLBACK_FILES:
                with (
                    zf.open(f"{FALLBACK_MEMBER_DIR}/{name}") as src,
                    (staging / name).open("wb") as out,
                ):
                    shutil.copyfileobj(src, out)
        digest = _sha256(staging / FALLBACK_FILES[0])
        if digest != FALLBACK_INTER_SHA256:
            shutil.rmtree(staging)
            raise FetchError(f"{FALLBACK_FILES[0]} in {wheels[0].name}: unexpected sha256 {digest}")
        _move_into_place(staging, dest)
