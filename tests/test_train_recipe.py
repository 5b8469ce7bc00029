"""Every recipe file loads strictly; --set overrides; the global batch splits into processes x steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from vggfeat.config import ConfigError
from vggfeat.train.data import batch_split
from vggfeat.train.recipe import load_recipe, recipe_changes, recipe_from_dict, recipe_to_dict

RECIPES = sorted((Path(__file__).parent.parent / "recipes" / "train").glob("*.yaml"))
SMOKE = Path(__file__).parent.parent / "recipes" / "train" / "smoke.yaml"


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
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        load_recipe(smoke, ["optim.weight_decy=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {nmae: vgg_a}\n")
    with pytest.raises(ConfigError, match="did you mean 'model.name'"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="crop"):
        load_recipe(smoke, ["data.crop=96"])


def test_accumulation_keeps_the_global_batch():
    o = load_recipe(RECIPES[0].parent / "vgg_d_s256.yaml").optim
    splits = [batch_split(o.batch_size, o.per_device_batch, w) for w in (1, 2, 4)]
    assert [s.accum for s in splits] == [4, 2, 1]
    assert [s.steps_per_epoch(1000) for s in splits] == [3, 3, 3]  # 1000 // 256: the tail is dropped
    with pytest.raises(ValueError, match="multiple"):
        batch_split(o.batch_size, o.per_device_batch, 3)


def test_a_recipe_has_no_data_generator_or_test_hooks():
    # a recipe trains on data.root like any dataset: the demo and the tests generate their data beforehand
    smoke = RECIPES[0].parent / "smoke.yaml"
    with pytest.raises(ConfigError, match="unknown key data.synthetic_seed"):
        load_recipe(smoke, ["data.synthetic_seed=0"])
    with pytest.raises(ConfigError, match="unknown key debug"):
        load_recipe(smoke, ["debug.kill_at_step=1"])


def test_recipe_changes_name_what_a_resume_may_not_change():
    smoke = load_recipe(SMOKE)
    saved = recipe_to_dict(smoke)
    free = ["name=x", "data.workers=4", "checkpoint.keep_last=9", "data.root=/elsewhere", "model.init_from=/w.pt"]
    assert recipe_changes(saved, load_recipe(SMOKE, free)) == {}
    changed = load_recipe(SMOKE, ["optim.lr=0.05", "runtime.amp=false"])
    assert recipe_changes(saved, changed) == {"optim.lr": (0.005, 0.05), "runtime.amp": (True, False)}
    # a checkpoint written before a key existed: read with its default, as the run had it
    del saved["data"]["shuffle_buffer"]
    assert recipe_changes(saved, smoke) == {}
