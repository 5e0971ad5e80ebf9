"""JSON reports and report pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qdm_med.errors import OutputError
from qdm_med.quadtree import recursive_quadtree
from qdm_med.reports import draw_quadtree, error_map, montage, versions, write_json_report


def test_json_report_round_trip_with_special_values(tmp_path):
    rep = {"command": "test", "versions": versions(), "psnr": math.inf, "bad": float("nan"), "arr": np.arange(3), "t": torch.tensor([1.5]),
           "n": np.float32(2.5), "p": tmp_path}
    path = write_json_report(rep, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert back["psnr"] == "inf" and back["bad"] == "nan" and back["arr"] == [0, 1, 2]
    assert back["t"] == [1.5] and back["n"] == 2.5 and back["p"] == str(tmp_path)
    assert back["versions"]["qdm_med"] and back["command"] == "test"
    with pytest.raises(OutputError):
        write_json_report(rep, tmp_path / "r.json")
    write_json_report({"a": 1}, tmp_path / "r.json", overwrite=True)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def test_quadtree_drawing_marks_only_the_detailed_quadrant():
    img = np.zeros((64, 64), np.float32)
    img[:32, 32:] = np.random.RandomState(0).rand(32, 32)  # detail only top-right
    leaves = recursive_quadtree(torch.from_numpy(img * 2 - 1)[None, None], 0.15)
    pic = draw_quadtree(img, leaves)
    assert pic.shape == (64, 64, 3)
    changed = np.abs(pic - img[..., None]).sum(-1) > 0
    inner_tl = changed[2:30, 2:30]  # homogeneous quadrants: borders at most, no inner lines
    assert not inner_tl.any()
    assert changed[:32, 32:].mean() > 0.2


def test_error_map_and_montage(tmp_path):
    a = np.random.RandomState(0).rand(16, 16).astype(np.float32)
    em = error_map(a, a + 0.1)
    assert em.shape == (16, 16, 3) and em.dtype == np.float32
    out = montage([a, em, np.stack([a] * 3, -1)], ["a", "error", "rgb"], tmp_path / "m.png")
    from PIL import Image

    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(ValueError):
        montage([a], ["a", "b"], tmp_path / "x.png")
