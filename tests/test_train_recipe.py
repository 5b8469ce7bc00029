"""Every recipe file loads strictly; --set overrides; the global batch splits into processes x steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from vggfeat.config import ConfigError
from vggfeat.train.recipe import accumulation_steps, load_recipe, recipe_from_dict, recipe_to_dict

RECIPES = sorted((Path(__file__).parent.parent / "recipes" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads(path):
    r = load_recipe(path)
    assert r.optim.momentum == 0.9 and r.optim.weight_decay == 5e-4  # Sect. 3.1
    assert recipe_from_dict(recipe_to_dict(r)) == r


def test_paper_stages():
    d = {p.stem: load_recipe(p) for p in RECIPES}
    assert len(RECIPES) >= 12
    assert d["vgg_a_s256"].optim.lr == 1e-2 and d["vgg_a_s256"].data.scale == (256, 256)
    assert d["vgg_a_s256"].optim.batch_size == 256 and d["vgg_a_s256"].optim.epochs == 74
    assert d["vgg_a_s256"].optim.max_drops == 3 and d["vgg_a_s256"].model.dropout == 0.5
    assert d["vgg_d_s256"].model.init_layers == "net_a" and "vgg_a_s256" in d["vgg_d_s256"].model.init_from
    assert d["vgg_e_s384"].optim.lr == 1e-3 and d["vgg_e_s384"].data.scale == (384, 384)
    assert d["vgg_d_jitter"].data.scale == (256, 512) and "vgg_d_s384" in d["vgg_d_jitter"].model.init_from
    assert d["vgg_e_glorot"].model.init == "glorot" and d["vgg_e_glorot"].model.init_from is None


def test_unknown_key_and_overrides(tmp_path):
    smoke = RECIPES[0].parent / "smoke.yaml"
    r = load_recipe(smoke, ["optim.lr=5e-4", "data.scale=[80,96]"])
    assert r.optim.lr == 5e-4 and r.data.scale == (80, 96)
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        load_recipe(smoke, ["optim.weight_decy=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {nmae: vgg_a}\n")
    with pytest.raises(ConfigError, match="did you mean 'name'"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="crop"):
        load_recipe(smoke, ["data.crop=96"])


def test_accumulation_keeps_the_global_batch():
    r = load_recipe(RECIPES[0].parent / "vgg_d_s256.yaml")
    assert [accumulation_steps(r, w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ValueError, match="multiple"):
        accumulation_steps(r, 3)


def test_synthetic_kind_is_checked():
    smoke = RECIPES[0].parent / "smoke.yaml"
    assert load_recipe(smoke).data.synthetic_kind == "shapes"
    r = load_recipe(smoke, ["data.synthetic_kind=pictograms", "data.synthetic_classes=20"])
    assert r.data.synthetic_kind == "pictograms"
    with pytest.raises(ConfigError, match="data.synthetic_kind must be one of shapes, pictograms"):
        load_recipe(smoke, ["data.synthetic_kind=faces"])
    with pytest.raises(ConfigError, match=r"data.synthetic_classes must be 1..20 \(the generated pictograms"):
        load_recipe(smoke, ["data.synthetic_kind=pictograms", "data.synthetic_classes=21"])
