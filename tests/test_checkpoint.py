"""lib/checkpoint.py: safetensors + provenance sidecar round-trips; tampering and missing files are caught."""

import pytest
import torch

from lib.checkpoint import load_checkpoint, save_checkpoint, sha256


def test_round_trip_and_tamper(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    path = save_checkpoint(tmp_path / "c.safetensors", state, command="cmd", seed=7, config={"k": 1}, extra={"x": 2})
    loaded, meta = load_checkpoint(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert meta["seed"] == 7 and meta["config"] == {"k": 1} and meta["x"] == 2
    assert meta["sha256"] == sha256(path) and meta["provenance"]["command"] == "cmd"
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(path)


def test_missing_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1)}, command="c", seed=0, config={})
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="json"):
        load_checkpoint(path)
