"""Small safetensors checkpoints with a provenance sidecar, verified on load (BOOK.md rule 8).

Used by every chapter that ships weights: first the diffusion chapter's digits model
(``lib.diffusion.train_digits``) and the digits classifier behind ``lib.metrics``. ``name.safetensors``
holds the tensors; ``name.json`` holds the command, seed, config, library versions
(``lib.utils.provenance``) and the file's sha256, checked by :func:`load_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""The repository's ``weights/`` folder."""


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], *, command: str, seed: int, config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write ``state_dict`` to ``path`` (safetensors) and its provenance to ``path.with_suffix('.json')``."""
    from safetensors.torch import save_file

    from lib.utils import provenance

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(path))
    meta = {"file": path.name, "sha256": sha256(path), "seed": seed, "config": config, **(extra or {})}
    meta["provenance"] = provenance(command)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; raises ``ValueError`` if the sha256 recorded in
    the sidecar does not match the file. Returns ``(state_dict, metadata)``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"need both {path} and {meta_path}")
    meta = json.loads(meta_path.read_text())
    digest = sha256(path)
    if digest != meta.get("sha256"):
        raise ValueError(f"sha256 mismatch for {path}: file {digest}, recorded {meta.get('sha256')}")
    return load_file(str(path)), meta


def remeasure(trained: Any, figures: dict, results: str | Path, out: str | Path, command: str) -> dict:
    """Re-measure a loaded checkpoint: its training-time figures (``trained.metadata["results"]``) updated by fresh
    ``figures`` and a reference to the checkpoint, saved to ``results`` with ``command`` as provenance."""
    from lib.utils import save_results

    meta = trained.metadata
    source = {"file": Path(out).name, "sha256": meta["sha256"], "command": meta["provenance"]["command"]}
    merged = {**meta.get("results", {}), **figures, "checkpoint": source}
    save_results(results, merged, command=command)
    print(f"saved {results}: {merged}")
    return merged
