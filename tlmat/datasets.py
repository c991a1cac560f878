"""Published files tlmat knows by name: datasets and pretrained weights.

``fetch(name)`` returns a local path: the copy under ``$TLMAT_DATA_DIR`` (default
``../shared/data`` when present) when it exists, else a previously downloaded copy in
the cache, else a fresh download from the public source — always checked against the
published SHA-256 before use. Offline without a local copy, it fails with a message that
says where to put the file.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tlmat.hints import did_you_mean

_CGCNN = "https://raw.githubusercontent.com/txie-93/cgcnn/master"
_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"


@dataclass(frozen=True)
class RemoteFile:
    """A public file: where it lives online, its checksum, its place in the data folder."""

    url: str
    sha256: str | None  # of the bytes at ``url``; None when unknown (then ``rows`` checks)
    local: str  # path under $TLMAT_DATA_DIR
    description: str = ""
    rows: int | None = None  # data rows a downloaded CSV must have
    columns: tuple[str, ...] = ()  # columns it must have
    #: the architecture of pretrained weights (``None``: a dataset or a feature table)
    architecture: str | None = None
    #: what pretrained weights predict: the property, its unit, whether the values are
    #: log10 of a quantity (in that unit), and a classifier's labels in output order
    target: str = ""
    unit: str = ""
    log10_of: str | None = None
    classes: tuple[str, ...] = ()


def _cgcnn_model(file: str, sha256: str, what: str, **target) -> RemoteFile:
    # units from the CGCNN repository's pre-trained/README.md (log = log10, as in the
    # Materials Project elasticity data the moduli models were trained on)
    return RemoteFile(
        f"{_CGCNN}/pre-trained/{file}",
        sha256,
        f"cgcnn_pretrained/pre-trained/{file}",
        what,
        architecture="cgcnn",
        **target,
    )


REGISTRY: dict[str, RemoteFile] = {
    "cgcnn/atom_init.json": RemoteFile(
        f"{_CGCNN}/data/sample-regression/atom_init.json",
        "cb90bd2257dbf8cfc4e6b2b6d4348d4616e8e9680f1339b1461137032e0f1894",
        "cgcnn_sample_regression/atom_init.json",
        "CGCNN 92-d element features (Xie & Grossman 2018)",
    ),
    "cgcnn/formation-energy-per-atom": _cgcnn_model(
        "formation-energy-per-atom.pth.tar",
        "e2f8bb910744f2c2f21d968285b6fd4316d795d0f3e7465ed0e3b4f3c92651a1",
        "formation energy per atom (eV/atom)",
        target="formation_energy_per_atom",
        unit="eV/atom",
    ),
    "cgcnn/final-energy-per-atom": _cgcnn_model(
        "final-energy-per-atom.pth.tar",
        "1afe9260a0b7bd01d2a0a752fbac12be5badea6a56e57aeea5877ae8f9a32c57",
        "final (total) energy per atom (eV/atom)",
        target="energy_per_atom",
        unit="eV/atom",
    ),
    "cgcnn/band-gap": _cgcnn_model(
        "band-gap.pth.tar",
        "d269775b9be0995c046abed3dd6556c281a3eff7b2e1d73cf81b99e2a1d4aa6c",
        "PBE band gap (eV)",
        target="band_gap",
        unit="eV",
    ),
    "cgcnn/efermi": _cgcnn_model(
        "efermi.pth.tar",
        "5ed4ba15b5bd3e04ce6b0eca75f15bb6465557aada4097f11291ea1e7cd48afb",
        "Fermi energy (eV)",
        target="efermi",
        unit="eV",
    ),
    "cgcnn/bulk-moduli": _cgcnn_model(
        "bulk-moduli.pth.tar",
        "0a3f66b9a0ee6acef11bb852717424a6c3560073239c17bdbea568cc43816dd3",
        "bulk modulus K_VRH (log10 GPa)",
        target="K_VRH",
        unit="log10 GPa",
        log10_of="GPa",
    ),
    "cgcnn/shear-moduli": _cgcnn_model(
        "shear-moduli.pth.tar",
        "34173bc59a0a8f9f74021155b304b74d9e709b1ff241d3f02e83031c9deb216c",
        "shear modulus G_VRH (log10 GPa)",
        target="G_VRH",
        unit="log10 GPa",
        log10_of="GPa",
    ),
    "cgcnn/poisson-ratio": _cgcnn_model(
        "poisson-ratio.pth.tar",
        "8d152338550b49ff6c3790cccdb892ee8bafe513bc49ab21955cdf7807e89513",
        "Poisson ratio",
        target="poisson_ratio",
    ),
    "cgcnn/semi-metal-classification": _cgcnn_model(
        "semi-metal-classification.pth.tar",
        "3791d48885afafb28c0797e22637b63ea591cf7fb27497ce537911261b92edc8",
        "metal / semiconductor classification",
        target="metal",
        classes=("semiconductor", "metal"),  # class 1 = metal, as in the CGCNN README
    ),
    "perov_5/val": RemoteFile(
        f"{_CDVAE}/perov_5/val.csv",
        "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
        "perov_5/val.csv.gz",
        "Castelli perovskites, CDVAE validation split (heat_ref in eV per 5-atom cell)",
    ),
    "perov_5/test": RemoteFile(
        f"{_CDVAE}/perov_5/test.csv",
        "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
        "perov_5/test.csv.gz",
        "Castelli perovskites, CDVAE test split (heat_ref in eV per 5-atom cell)",
    ),
    # CDVAE's train.csv is not in the offline snapshot, so the checksum of its bytes is
    # unknown here: a download is checked by its row count and columns instead
    "perov_5/train": RemoteFile(
        f"{_CDVAE}/perov_5/train.csv",
        None,
        "perov_5/train.csv.gz",
        "Castelli perovskites, CDVAE training split (heat_ref in eV per 5-atom cell)",
        rows=11_356,
        columns=("material_id", "cif", "heat_ref"),
    ),
}


def data_dir() -> Path | None:
    """The local dataset folder, or ``None`` when there is none."""
    env = os.environ.get("TLMAT_DATA_DIR")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def download_dir() -> Path:
    return Path(os.environ.get("TLMAT_CACHE_DIR", Path.home() / ".cache" / "tlmat")) / "downloads"


def sha256sum(path: Path, decompress: bool = False) -> str:
    """SHA-256 of a file's bytes (of its gunzipped bytes with ``decompress``)."""
    digest = hashlib.sha256()
    opener = gzip.open if decompress else Path.open
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, entry: RemoteFile) -> bool:
    """Whether ``path`` holds the published bytes (a local ``.gz`` copy of an uncompressed
    download is compared by its content)."""
    if not path.is_file():
        return False
    if entry.sha256 is None:
        return True
    gunzip = path.suffix == ".gz" and not entry.url.endswith(".gz")
    return sha256sum(path, decompress=gunzip) == entry.sha256


def _content_problem(path: Path, entry: RemoteFile) -> str | None:
    """Why a downloaded CSV without a published checksum is not the expected table."""
    if entry.rows is None and not entry.columns:
        return None
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = sum(1 for _ in reader)
    missing = [c for c in entry.columns if c not in header]
    if missing:
        return f"columns {missing} missing"
    if entry.rows is not None and rows != entry.rows:
        return f"{rows} rows instead of {entry.rows}"
    return None


def fetch(name: str, timeout: float = 30.0) -> Path:
    """A verified local path for a registered file (see module docstring)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown file {name!r}; known: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    root = data_dir()
    if root is not None and (root / entry.local).is_file():
        local = root / entry.local
        if not _verified(local, entry):
            raise ValueError(f"{local}: checksum differs from the published {entry.sha256}")
        return local
    cached = download_dir() / Path(entry.url).name
    if _verified(cached, entry):
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib.request.urlopen(entry.url, timeout=timeout) as response,
            tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp)
    except OSError as error:
        raise FileNotFoundError(
            f"{name}: no local copy under $TLMAT_DATA_DIR ({root}/{entry.local}) and the "
            f"download from {entry.url} failed ({error}); are you offline?"
        ) from error
    tmp_path = Path(tmp.name)
    if entry.sha256 is not None and sha256sum(tmp_path) != entry.sha256:
        tmp_path.unlink()
        raise ValueError(f"{entry.url}: downloaded bytes do not match the published checksum")
    problem = _content_problem(tmp_path, entry) if entry.sha256 is None else None
    if problem is not None:
        tmp_path.unlink()
        raise ValueError(f"{entry.url}: not the expected table ({problem})")
    os.replace(tmp_path, cached)
    return cached


def resolve(spec: str | Path) -> Path:
    """A path as given, a path inside the local dataset folder
    (``mp_cgcnn_36k/mp_cgcnn_36k.csv.gz``), or the local path of a registered name
    (``perov_5/train``)."""
    local = _local(spec)
    if local is not None:
        return local
    if str(spec) in REGISTRY:
        return fetch(str(spec))
    raise _not_found(spec)


def check(spec: str | Path) -> None:
    """Raise what :func:`resolve` would for data that is neither a path nor a registered
    name, with the closest names, without reading or fetching anything: a mistake is
    said before the heavy work starts."""
    if str(spec) not in REGISTRY and _local(spec) is None:
        raise _not_found(spec)


def _not_found(spec: str | Path) -> FileNotFoundError:
    # the registry also holds pretrained weights; those are models, named by the hub
    datasets = [name for name, entry in REGISTRY.items() if entry.architecture is None]
    hint = did_you_mean(str(spec), [*datasets, *_nearby(Path(spec))])
    return FileNotFoundError(
        f"{spec}: no such file or folder, and not a registered name{hint} "
        f"(registered: {', '.join(datasets)})"
    )


def _local(spec: str | Path) -> Path | None:
    path = Path(spec)
    if path.exists():
        return path
    root = data_dir()
    if root is not None and not path.is_absolute() and (root / path).exists():
        return root / path
    return None


def _nearby(path: Path, most: int = 2000) -> list[str]:
    """The entries of the folder ``path`` points into, here or in the data folder, as the
    user would type them (for a suggestion)."""
    out: list[str] = []
    for base in (Path.cwd(), data_dir()):
        folder = path.parent if path.is_absolute() or base is None else base / path.parent
        if folder.is_dir():
            entries = itertools.islice(folder.iterdir(), most)
            out += [str(path.parent / entry.name) for entry in entries]
    return [name.removeprefix("./") for name in out]
