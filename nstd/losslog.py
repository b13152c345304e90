"""The JSON loss log written beside every output image."""

from __future__ import annotations

import platform
import time

import nstd
from nstd.params import TransferParams
from nstd.weights import WeightInfo

SCHEMA = 1


def loss_log(*, input_path: str, input_sha256: str, styles: list[dict], params: TransferParams,
             weights: WeightInfo, device: str, batch_id: str, batch_size: int, batch_index: int,
             output: dict, timings: dict, history: list[dict], job_id: int | None = None,
             runs: list[dict] | None = None, guide: dict | None = None) -> dict:
    """`runs`: how each scale ran (size, seconds, precision, checkpointing, peak memory).
    `guide`: the mask, region map or faces that shaped it (its records then carry
    `style_by_region`)."""
    return {
        "schema": SCHEMA,
        "job_id": job_id,
        "input": {"path": input_path, "sha256": input_sha256},
        "styles": styles,
        **({"guide": guide} if guide else {}),
        "params": params.as_dict(),
        "weights": {"id": weights.model_id, "file_sha256": weights.file_sha256,
                    "source_sha256": weights.source_sha256, "preprocessing": weights.preprocessing},
        "device": device,
        "batch": {"id": batch_id, "size": batch_size, "index": batch_index},
        "output": output,
        "timings": timings,
        "runs": runs or [],
        "versions": versions(),
        "history": history,
    }


def versions() -> dict:
    import torch  # here, not with the module: moving a photo to failed/ records these too

    return {"nstd": nstd.__version__, "torch": torch.__version__, "python": platform.python_version()}


def iso_time(t: float) -> str:
    """UTC with milliseconds, as every timestamp in a loss log."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def software() -> str:
    """The EXIF Software field of an output."""
    return f"nstd {nstd.__version__}"


def description(styles: list[str]) -> str:
    """The EXIF ImageDescription field of an output."""
    return f"Stylized after {' + '.join(styles)} by nstd {nstd.__version__} (neural style transfer)"
