"""Input formats: detect a MovieLens release (or RecBole atomic files, or plain CSV) and parse it.

Ratings files are large (32 million lines for MovieLens-32M), so they are streamed in blocks of
bytes, parsed by pandas' C reader into numpy columns and validated with vectorised checks; no
Python object is built per rating. Movies files are small (under 100,000 lines) and are parsed
line by line, which keeps their error messages exact.

Every problem is reported as ``FILE:LINE: problem`` through :class:`~app.ingest.errors.Problems`,
which either raises at once or counts the line as skipped (``--skip-invalid``).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype
from pandas.errors import ParserError
from tqdm import tqdm

from app import rating_scale
from app.ingest.errors import IngestError, Problems
from app.ingest.titles import parse_year, split_title

GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
NO_GENRES = "(no genres listed)"

MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns in the store
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31 23:59:59 UTC
MAX_TEXT = 512  # movies.title and movies.genres are VARCHAR(512)
BLOCK_BYTES = 4 * 2**20  # ratings are parsed ~4 MiB (about 160,000 lines) at a time: a smaller
# block stays in the CPU caches and lets the server start sooner (less Python time measured)

RATING_ROLES = ("user_id", "movie_id", "rating", "timestamp")
# Header names of the CSV formats, mapped to the role they play.
_CSV_ALIASES = {
    "userid": "user_id",
    "user_id": "user_id",
    "movieid": "movie_id",
    "movie_id": "movie_id",
    "item_id": "movie_id",
    "rating": "rating",
    "timestamp": "timestamp",
    "title": "title",
    "movie_title": "title",
    "genres": "genres",
    "class": "genres",
    "release_year": "year",
}


@dataclass(frozen=True)
class FileRef:
    """A file in a directory or inside a zip archive, opened as a binary stream on demand."""

    name: str  # shown in messages: a path, or archive.zip/member
    size: int
    opener: Callable[[], BinaryIO]
    archive: str | None = None  # the zip archive it is read from

    def open(self) -> BinaryIO:
        return self.opener()

    def read_bytes(self) -> bytes:
        with self.open() as stream:
            return stream.read()

    def first_line(self, encoding: str) -> str:
        """The header line, decoded (BOM and line ending removed)."""
        with self.open() as stream:
            raw = stream.readline()
        return raw.decode(encoding, errors="replace").removeprefix("\ufeff").rstrip("\r\n")


@dataclass(frozen=True)
class RatingsLayout:
    """How a ratings file is written: the role of each field, separator, encoding, header."""

    fields: tuple[str | None, ...]  # "user_id", "movie_id", "rating", "timestamp" or None (ignored)
    sep: str
    encoding: str
    header: bool


MoviesParser = Callable[[FileRef, Problems], pd.DataFrame]


@dataclass(frozen=True)
class Dataset:
    """A detected input: its release name, ratings file and layout, and movies file and parser."""

    release: str
    ratings: FileRef
    layout: RatingsLayout
    movies: FileRef | None
    parse_movies: MoviesParser | None


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def _directory_files(root: Path, depth: int = 3) -> list[FileRef]:
    """Files under ``root`` up to ``depth`` folders deep (a release folder or its parent)."""
    found: list[FileRef] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and len(path.relative_to(root).parts) <= depth:
            found.append(FileRef(str(path), path.stat().st_size, _path_opener(path)))
    return found


def _path_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def _zip_files(archive: Path) -> list[FileRef]:
    """The members of a zip archive; each opens its own handle so streams never interfere."""
    with zipfile.ZipFile(archive) as zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
    return [
        FileRef(
            f"{archive}/{info.filename}",
            info.file_size,
            _member_opener(archive, info.filename),
            archive=str(archive),
        )
        for info in infos
    ]


def _member_opener(archive: Path, member: str) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        zf = zipfile.ZipFile(archive)  # the member stream keeps the archive open until closed
        return zf.open(member)  # type: ignore[return-value]

    return opener


def _single(files: list[FileRef], basename: str, where: Path) -> FileRef | None:
    """The one file called ``basename``; several copies mean the input mixes releases."""
    matches = [f for f in files if Path(f.name).name.lower() == basename]
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise IngestError(str(where), None, f"several {basename} files ({names}); give one release")
    return matches[0] if matches else None


def _by_suffix(files: list[FileRef], suffix: str, where: Path) -> FileRef | None:
    matches = [f for f in files if f.name.lower().endswith(suffix)]
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise IngestError(str(where), None, f"several *{suffix} files ({names}); give one")
    return matches[0] if matches else None


# Files of a MovieLens release (or RecBole's): the release is imported by its folder.
_RELEASE_FILES = {"u.data", "u.item", "ratings.dat", "movies.dat", "tags.csv", "links.csv"}


def _first_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.readline(4096).decode("utf-8", "replace").strip().lstrip("\ufeff")
    except OSError:
        return ""


def _file_hint(path: Path) -> str:
    """What to type instead when a single file is given as the import PATH ("" if unsure)."""
    name = path.name.lower()
    header = _first_line(path).replace('"', "").replace(" ", "").lower()
    if (
        name in _RELEASE_FILES
        or name.endswith(".inter")
        or header.startswith(("userid,", "movieid,"))
    ):
        return (
            "; a MovieLens file is imported with its release folder: "
            f"movierec data import {path.parent}"
        )
    if header.startswith("movie_id,"):
        return (
            "; a movies CSV goes with its ratings: "
            f"movierec data import --ratings RATINGS.csv --movies {path}"
        )
    if name.endswith(".csv"):
        return (
            f"; a CSV of ratings (header user_id,movie_id,rating[,timestamp]) is imported with "
            f"--ratings: movierec data import --ratings {path} [--movies MOVIES.csv]"
        )
    return ""


def detect(path: Path) -> Dataset:
    """Recognise the MovieLens release (or RecBole atomic files) in a directory or zip archive."""
    if not path.exists():
        raise IngestError(str(path), None, "no such file or directory")
    if path.is_dir():
        files = _directory_files(path)
    elif zipfile.is_zipfile(path):
        files = _zip_files(path)
    else:
        raise IngestError(str(path), None, "not a directory or a zip archive" + _file_hint(path))

    u_data = _single(files, "u.data", path)
    ratings_dat = _single(files, "ratings.dat", path)
    ratings_csv = _single(files, "ratings.csv", path)
    inter = _by_suffix(files, ".inter", path)
    present = [f for f in (u_data, ratings_dat, ratings_csv, inter) if f is not None]
    if len(present) > 1:
        names = ", ".join(f.name for f in present)
        raise IngestError(str(path), None, f"several ratings files ({names}); give one release")

    if u_data is not None:
        return Dataset(
            "movielens-100k",
            u_data,
            RatingsLayout(RATING_ROLES, "\t", "latin-1", header=False),
            _required(_single(files, "u.item", path), "u.item", path),
            parse_u_item,
        )
    if ratings_dat is not None:
        # 1M ships users.dat and latin-1 text; 10M has no users.dat and is UTF-8.
        is_1m = _single(files, "users.dat", path) is not None
        encoding = "latin-1" if is_1m else "utf-8"
        movies = _required(_single(files, "movies.dat", path), "movies.dat", path)
        return Dataset(
            "movielens-1m" if is_1m else "movielens-10m",
            ratings_dat,
            RatingsLayout(RATING_ROLES, "::", encoding, header=False),
            movies,
            _movies_dat_parser(encoding),
        )
    if ratings_csv is not None:
        return Dataset(
            "movielens-csv",
            ratings_csv,
            csv_ratings_layout(ratings_csv),
            _required(_single(files, "movies.csv", path), "movies.csv", path),
            parse_movies_csv,
        )
    if inter is not None:
        return Dataset(
            "recbole",
            inter,
            recbole_ratings_layout(inter),
            _by_suffix(files, ".item", path),
            parse_recbole_item,
        )
    raise IngestError(
        str(path),
        None,
        "no MovieLens ratings file found (u.data, ratings.dat, ratings.csv or *.inter)",
    )


def _required(ref: FileRef | None, basename: str, where: Path) -> FileRef:
    if ref is None:
        raise IngestError(str(where), None, f"{basename} is missing beside the ratings file")
    return ref


def custom_csv(ratings: Path, movies: Path | None) -> Dataset:
    """``--ratings FILE.csv [--movies FILE.csv]``: headers ``user_id,movie_id,rating[,timestamp]``
    and ``movie_id,title[,genres]`` (genres ``|``-separated)."""
    refs = []
    for path in (ratings, movies):
        if path is None:
            continue
        if not path.is_file():
            raise IngestError(str(path), None, "no such file")
        refs.append(FileRef(str(path), path.stat().st_size, _path_opener(path)))
    ratings_ref = refs[0]
    movies_ref = refs[1] if movies is not None else None
    return Dataset(
        "csv",
        ratings_ref,
        csv_ratings_layout(ratings_ref),
        movies_ref,
        parse_movies_csv if movies_ref is not None else None,
    )


def _roles_from_header(ref: FileRef, names: list[str]) -> tuple[str | None, ...]:
    """Map header names to rating roles; user, movie and rating are required."""
    roles: list[str | None] = []
    for name in names:
        role = _CSV_ALIASES.get(name.strip().split(":")[0].lower())
        roles.append(role if role in RATING_ROLES else None)
    missing = [r for r in RATING_ROLES[:3] if r not in roles]
    if missing:
        raise IngestError(
            ref.name,
            1,
            f"header {','.join(names)!r} lacks {', '.join(missing)} "
            "(expected user_id,movie_id,rating[,timestamp])",
        )
    return tuple(roles)


def csv_ratings_layout(ref: FileRef) -> RatingsLayout:
    """Ratings CSV, header MovieLens ``userId,movieId,...`` or ``user_id,movie_id,...``."""
    names = next(csv.reader([ref.first_line("utf-8")]), [])
    return RatingsLayout(_roles_from_header(ref, names), ",", "utf-8", header=True)


def recbole_ratings_layout(ref: FileRef) -> RatingsLayout:
    """A RecBole ``.inter`` file: tab-separated, typed header ``user_id:token item_id:token``."""
    names = ref.first_line("utf-8").split("\t")
    return RatingsLayout(_roles_from_header(ref, names), "\t", "utf-8", header=True)


# --------------------------------------------------------------------------------------------
# Text decoding shared by the movies parsers
# --------------------------------------------------------------------------------------------

_C1_CONTROLS = re.compile("[\x80-\x9f]")


def decode_lines(ref: FileRef, encoding: str, problems: Problems) -> list[str]:
    """The file's lines decoded (line endings kept); undecodable lines become empty strings.

    A latin-1 file that is valid UTF-8 was re-saved as UTF-8 and is read as such. In latin-1,
    the C1 control characters (bytes 0x80-0x9f) never occur in real text: they betray a file in
    another encoding (cp1252, UTF-8 mangled), which latin-1 would otherwise read silently.
    """
    data = ref.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if encoding == "latin-1" and not data.isascii():
        try:
            data.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            pass
    raw_lines = data.split(b"\n")
    lines: list[str] = []
    for number, raw in enumerate(raw_lines, start=1):
        ending = "\n" if number < len(raw_lines) else ""
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 4]
            problems.add(
                ref.name, number, f"bytes {bad!r} are not valid {encoding} (wrong encoding?)"
            )
            lines.append(ending)
            continue
        control = _C1_CONTROLS.search(text) if encoding == "latin-1" else None
        if control is not None:
            code = ord(control.group())
            problems.add(
                ref.name,
                number,
                f"byte 0x{code:02x} is a control character in latin-1 (wrong encoding?)",
            )
            lines.append(ending)
            continue
        lines.append(text + ending)
    return lines


# --------------------------------------------------------------------------------------------
# Movies parsers: each returns columns movie_id, title, year, genres (one line per id)
# --------------------------------------------------------------------------------------------


@dataclass
class _MovieRows:
    """Parsed movies keyed by id; a second line for an id is a problem naming both lines."""

    ref: FileRef
    problems: Problems
    rows: dict[int, tuple[str, int | None, str]]
    lines: dict[int, int] = field(default_factory=dict)  # movie id → its line

    def add(self, line: int, raw_id: str, title: str, year: int | None, genres: str) -> None:
        movie_id = _parse_id(raw_id)
        if movie_id is None:
            self.problems.add(self.ref.name, line, f"movie id {raw_id.strip()!r} is not a valid id")
            return
        if not title:
            self.problems.add(self.ref.name, line, "empty title")
            return
        if len(title) > MAX_TEXT or len(genres) > MAX_TEXT:
            self.problems.add(
                self.ref.name, line, f"title or genres longer than {MAX_TEXT} characters"
            )
            return
        first = self.lines.get(movie_id)
        if first is not None:
            self.problems.add(
                self.ref.name, line, f"movie id {movie_id} is already on line {first}"
            )
            return
        self.lines[movie_id] = line
        self.rows[movie_id] = (title, year, genres)

    def frame(self) -> pd.DataFrame:
        ids = np.fromiter(self.rows.keys(), dtype=np.int64, count=len(self.rows))
        values = list(self.rows.values())
        return pd.DataFrame(
            {
                "movie_id": ids,
                "title": [v[0] for v in values],
                "year": pd.array([v[1] for v in values], dtype="Int64"),
                "genres": [v[2] for v in values],
            }
        )


def _parse_id(raw: str) -> int | None:
    raw = raw.strip()
    if not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= MAX_ID else None


def _join_genres(genres: list[str]) -> str:
    return "|".join(g for g in (g.strip() for g in genres) if g and g != NO_GENRES)


def parse_u_item(ref: FileRef, problems: Problems) -> pd.DataFrame:
    """MovieLens-100K ``u.item``: ``id|title|release date|video date|url|`` + 19 genre flags."""
    movies = _MovieRows(ref, problems, {})
    n_fields = 5 + len(GENRES_100K)
    for number, line in enumerate(decode_lines(ref, "latin-1", problems), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != n_fields:
            problems.add(
                ref.name,
                number,
                f"expected {n_fields} fields separated by '|', found {len(fields)}",
            )
            continue
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            problems.add(ref.name, number, "genre flags must be 0 or 1")
            continue
        title, year = split_title(fields[1])
        if year is None:  # "01-Jan-1995": the release date carries the year too
            year = parse_year(fields[2][-4:])
        genres = [name for name, flag in zip(GENRES_100K, flags, strict=True) if flag == "1"]
        movies.add(number, fields[0], title, year, _join_genres(genres))
    return movies.frame()


def _movies_dat_parser(encoding: str) -> MoviesParser:
    def parse(ref: FileRef, problems: Problems) -> pd.DataFrame:
        return parse_movies_dat(ref, problems, encoding)

    return parse


def parse_movies_dat(ref: FileRef, problems: Problems, encoding: str) -> pd.DataFrame:
    """MovieLens 1M/10M ``movies.dat``: ``id::title::Genre|Genre``."""
    movies = _MovieRows(ref, problems, {})
    for number, line in enumerate(decode_lines(ref, encoding, problems), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            problems.add(
                ref.name, number, f"expected 3 fields separated by '::', found {len(fields)}"
            )
            continue
        title, year = split_title(fields[1])
        movies.add(number, fields[0], title, year, _join_genres(fields[2].split("|")))
    return movies.frame()


def parse_movies_csv(ref: FileRef, problems: Problems) -> pd.DataFrame:
    """``movies.csv``: MovieLens ``movieId,title,genres`` or ``movie_id,title[,genres]``.

    Titles with commas are quoted; genres are ``|``-separated, ``(no genres listed)`` is none.
    """
    movies = _MovieRows(ref, problems, {})
    reader = csv.reader(decode_lines(ref, "utf-8", problems))
    header = next(reader, None)
    roles = [_CSV_ALIASES.get(name.strip().lower()) for name in header or []]
    if "movie_id" not in roles or "title" not in roles:
        raise IngestError(
            ref.name,
            1,
            f"header {header!r} lacks movie_id or title (expected movie_id,title[,genres])",
        )
    at = {role: index for index, role in enumerate(roles) if role is not None}
    for fields in reader:
        number = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(roles):
            problems.add(ref.name, number, f"expected {len(roles)} fields, found {len(fields)}")
            continue
        title, year = split_title(fields[at["title"]])
        genres = fields[at["genres"]].split("|") if "genres" in at else []
        movies.add(number, fields[at["movie_id"]], title, year, _join_genres(genres))
    return movies.frame()


def parse_recbole_item(ref: FileRef, problems: Problems) -> pd.DataFrame:
    """RecBole ``.item``: ``item_id:token movie_title:token_seq release_year:token class:token_seq``
    (tab-separated; genres space-separated)."""
    lines = decode_lines(ref, "utf-8", problems)
    names = (
        [n.split(":")[0].strip().lower() for n in lines[0].rstrip("\r\n").split("\t")]
        if lines
        else []
    )
    roles = [_CSV_ALIASES.get(name) for name in names]
    if "movie_id" not in roles or "title" not in roles:
        raise IngestError(ref.name, 1, f"header lacks item_id or movie_title (found {names})")
    at = {role: index for index, role in enumerate(roles) if role is not None}
    movies = _MovieRows(ref, problems, {})
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            problems.add(
                ref.name, number, f"expected {len(names)} tab-separated fields, found {len(fields)}"
            )
            continue
        title, year = fields[at["title"]].strip(), None
        if "year" in at:
            year = parse_year(fields[at["year"]])
        if year is None:
            title, year = split_title(title)
        genres = fields[at["genres"]].split() if "genres" in at else []
        movies.add(number, fields[at["movie_id"]], title, year, _join_genres(genres))
    return movies.frame()


# --------------------------------------------------------------------------------------------
# Ratings: streamed blocks, vectorised validation
# --------------------------------------------------------------------------------------------

# Problem codes, in the order they are checked for each line.
OK, FIELDS, NOT_NUMBER, BAD_ID, BAD_RATING, BAD_TIMESTAMP, UNKNOWN_MOVIE = range(7)


class KnownIds:
    """Membership test for ids: a boolean table indexed by id when the ids are moderate (one
    memory read per rating), ``np.isin`` (a sort per chunk) otherwise."""

    TABLE_LIMIT = 50_000_000

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids
        top = int(ids.max()) if len(ids) else -1
        self.table: np.ndarray | None = None
        if top < self.TABLE_LIMIT:
            self.table = np.zeros(top + 2, dtype=bool)
            self.table[ids] = True

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Which ``values`` (float64, possibly NaN or out of range) are known ids."""
        if self.table is None:
            return np.isin(values, self.ids)
        inside = (values >= 0) & (values < len(self.table))  # NaN compares False
        found = np.zeros(len(values), dtype=bool)
        found[inside] = self.table[values[inside].astype(np.int64)]
        return found


def iter_blocks(stream: BinaryIO, size: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Whole lines in blocks of about ``size`` bytes, each with the index of its first line
    relative to where the stream was when called."""
    carry = b""
    offset = 0
    while True:
        data = stream.read(size)
        if not data:
            break
        data = carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        block, carry = data[: cut + 1], data[cut + 1 :]
        yield offset, block
        offset += block.count(b"\n")
    if carry:
        yield offset, carry


def iter_rating_chunks(
    dataset: Dataset,
    known_movies: np.ndarray,
    problems: Problems,
    default_timestamp: int,
    progress: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[pd.DataFrame]:
    """Validated ratings in chunks: int64 ``user_id``, ``movie_id``, ``timestamp``, ``line`` and
    float64 ``rating``, in file order.

    ``known_movies`` holds every movie id a rating may refer to (store and movies file); a file
    without timestamps gets ``default_timestamp`` (the import time) on every rating.
    """
    ref, layout = dataset.ratings, dataset.layout
    is_known = KnownIds(known_movies)
    with (
        ref.open() as stream,
        tqdm(
            total=ref.size,
            unit="B",
            unit_scale=True,
            desc=f"ratings {Path(ref.name).name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        first_line = 1
        if layout.header:
            bar.update(len(stream.readline()))
            first_line = 2
        for offset, block in iter_blocks(stream, block_bytes):
            bar.update(len(block))
            chunk = _parse_block(block, first_line + offset, dataset, is_known, problems)
            if "timestamp" not in layout.fields:
                chunk["timestamp"] = np.int64(default_timestamp)
            if len(chunk):
                yield chunk


def _read_block(data: bytes, layout: RatingsLayout, sep: str) -> pd.DataFrame:
    names = [f"f{i}" for i in range(len(layout.fields))]
    return pd.read_csv(
        io.BytesIO(data),
        sep=sep,
        header=None,
        names=names,
        index_col=False,
        skip_blank_lines=False,
        keep_default_na=False,
        na_values=[""],
        encoding=layout.encoding,
        quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
        engine="c",
        low_memory=False,
    )


def _blank_bad_lines(data: bytes, layout: RatingsLayout, sep: str) -> tuple[bytes, dict[int, str]]:
    """Slow path for a block pandas refused: find undecodable lines and lines with a wrong
    number of fields, blank them (keeping line numbers) and describe each."""
    lines = data.split(b"\n")
    n_fields = len(layout.fields)
    bad: dict[int, str] = {}
    for index, raw in enumerate(lines):
        try:
            text = raw.decode(layout.encoding)
        except UnicodeDecodeError as exc:
            chunk = raw[exc.start : exc.start + 4]
            bad[index] = f"bytes {chunk!r} are not valid {layout.encoding} (wrong encoding?)"
            lines[index] = b""
            continue
        found = text.count(sep) + 1
        if text.strip() and found != n_fields:
            bad[index] = f"expected {n_fields} fields separated by {layout.sep!r}, found {found}"
            lines[index] = b""
    return b"\n".join(lines), bad


def _parse_block(
    block: bytes, first_line: int, dataset: Dataset, is_known: KnownIds, problems: Problems
) -> pd.DataFrame:
    """Parse and validate one block of whole lines; invalid lines are reported or dropped."""
    layout = dataset.layout
    sep = layout.sep
    if sep == "::":  # pandas' fast reader takes one-character separators only
        block, sep = block.replace(b"::", b"\t"), "\t"
    frame, broken = _read_lenient(block, layout, sep, dataset.ratings.name, first_line)
    columns = {role: frame[f"f{i}"] for i, role in enumerate(layout.fields) if role is not None}
    numbers = {role: _as_float(raw) for role, raw in columns.items()}
    # A line whose every field is empty is blank and ignored; broken lines were blanked too.
    blank = np.all([raw.isna().to_numpy() for _, raw in frame.items()], axis=0)
    blank[list(broken)] = False
    code, culprit = _problem_codes(columns, numbers, blank, list(broken), is_known)
    _report(code, culprit, broken, block, first_line, layout, sep, dataset.ratings.name, problems)

    keep = (code == OK) & ~blank
    out = pd.DataFrame(
        {
            "user_id": numbers["user_id"][keep].astype(np.int64),
            "movie_id": numbers["movie_id"][keep].astype(np.int64),
            "rating": numbers["rating"][keep],
            "line": np.flatnonzero(keep).astype(np.int64) + first_line,
        }
    )
    if "timestamp" in numbers:
        out["timestamp"] = numbers["timestamp"][keep].astype(np.int64)
    return out


def _read_lenient(
    block: bytes, layout: RatingsLayout, sep: str, name: str, first_line: int
) -> tuple[pd.DataFrame, dict[int, str]]:
    """The block as a frame of one row per line. When pandas refuses it (a line with too many
    fields, undecodable bytes), the faulty lines are blanked and returned with their problem."""
    try:
        if layout.encoding != "latin-1":  # every byte sequence is valid latin-1
            block.decode(layout.encoding)
        return _read_block(block, layout, sep), {}
    except (UnicodeDecodeError, ParserError):
        block, broken = _blank_bad_lines(block, layout, sep)
        try:
            return _read_block(block, layout, sep), broken
        except ParserError as exc:
            raise IngestError(name, first_line, f"cannot parse: {exc}") from exc


def _problem_codes(
    columns: dict[str, pd.Series],
    numbers: dict[str, np.ndarray],
    blank: np.ndarray,
    broken: list[int],
    is_known: KnownIds,
) -> tuple[np.ndarray, np.ndarray]:
    """Per line, the first problem found (``OK`` for none) and the field at fault."""
    n = len(blank)
    code = np.zeros(n, dtype=np.int8)
    culprit = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, problem: int, role: str) -> None:
        fresh = mask & (code == OK)
        code[fresh] = problem
        culprit[fresh] = role

    broken_rows = np.zeros(n, dtype=bool)
    broken_rows[broken] = True
    flag(broken_rows, FIELDS, "")
    for role, raw in columns.items():
        flag(raw.isna().to_numpy() & ~blank, FIELDS, role)
    for role, raw in columns.items():
        flag(np.isnan(numbers[role]) & raw.notna().to_numpy(), NOT_NUMBER, role)
    for role in ("user_id", "movie_id"):
        value = numbers[role]
        flag(~((value >= 0) & (value <= MAX_ID) & (np.floor(value) == value)), BAD_ID, role)
    flag(~rating_scale.valid_ratings(numbers["rating"]), BAD_RATING, "rating")
    if "timestamp" in numbers:
        ts = numbers["timestamp"]
        flag(~((ts >= 0) & (ts <= MAX_TIMESTAMP)), BAD_TIMESTAMP, "timestamp")
    flag(~is_known(numbers["movie_id"]), UNKNOWN_MOVIE, "movie_id")
    code[blank] = OK
    return code, culprit


def _report(
    code: np.ndarray,
    culprit: np.ndarray,
    broken: dict[int, str],
    block: bytes,
    first_line: int,
    layout: RatingsLayout,
    sep: str,
    name: str,
    problems: Problems,
) -> None:
    """Describe the first invalid lines (raising unless skipping) and count the rest."""
    bad_rows = np.flatnonzero(code)
    if not len(bad_rows):
        return
    lines = block.split(b"\n")
    described = bad_rows[: problems.room()]
    for row in described:
        message = broken.get(int(row)) or _describe(
            int(code[row]), str(culprit[row]), lines[row], layout, sep
        )
        problems.add(name, first_line + int(row), message)
    problems.add_uncounted(len(bad_rows) - len(described))


def _as_float(raw: pd.Series) -> np.ndarray:
    """A column as float64; values that are not numbers become NaN."""
    if is_numeric_dtype(raw.dtype):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _describe(
    code: int,
    role: str,
    raw_line: bytes,
    layout: RatingsLayout,
    sep: str,
) -> str:
    """A readable message for one invalid line (``sep``: the separator as parsed); values are
    quoted as written in the file."""
    fields = raw_line.decode(layout.encoding, errors="replace").rstrip("\r").split(sep)
    at = layout.fields.index(role) if role in layout.fields else len(fields)
    shown = fields[at].strip().strip('"') if at < len(fields) else ""
    if code == FIELDS:
        found = len(fields)
        if found != len(layout.fields):
            return (
                f"expected {len(layout.fields)} fields separated by {layout.sep!r}, found {found}"
            )
        return f"{role} is empty"
    if code == NOT_NUMBER:
        return f"{role} {shown!r} is not a number"
    if code == BAD_ID:
        return f"{role} {shown} is not an integer id between 0 and {MAX_ID}"
    if code == BAD_RATING:
        return f"rating {shown} is not {rating_scale.RULE}"
    if code == BAD_TIMESTAMP:
        return f"timestamp {shown} is not a valid Unix time"
    if code == UNKNOWN_MOVIE:
        return f"movie {shown} is neither in the store nor in the movies file"
    return "invalid line"
