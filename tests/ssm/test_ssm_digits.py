"""Sequential digits (lib/ssm/digits.py): each classifier trains a few steps and the study writes its file."""

import json

import pytest
import torch

from lib.ssm import digits


@pytest.mark.parametrize("model", digits.MODELS)
def test_classifiers_forward_and_fit(model):
    c = digits.DigitsConfig(model=model, d_model=16, d_state=8, steps=2, batch=8)
    net, hist = digits.fit(c)
    assert net(torch.zeros(3, 64)).shape == (3, 10)
    assert 0.0 <= hist.evals[-1]["acc"] <= 1.0


def test_study_writes_results(tmp_path):
    out = tmp_path / "d.json"
    assert digits.main(["--seeds", "0", "--models", "s4d", "--steps", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["runs"][0]["model"] == "s4d"


def test_errors():
    with pytest.raises(ValueError, match="model must be one of"):
        digits.DigitsConfig(model="gru")
    net = digits.SequenceClassifier(digits.DigitsConfig(d_model=8, d_state=4))
    with pytest.raises(ValueError, match="pixels must be"):
        net(torch.zeros(2, 8, 8))
