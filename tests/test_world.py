"""Counterfactory World: determinism, exact interventions, captions, planted correlations."""
import numpy as np
import pytest

from src.world.dataset import FACTORS_BY_EDIT_TYPE, WorldSpec, build_world
from src.world.grammar import BACKGROUNDS, CLASSES, VOCABULARY, Factors, caption
from src.world.renderer import Scene, WorldRenderer

BASE = Factors("star", "red", "striped", "small", "snow", "night", "photo", "tree", "dog")


def test_render_is_deterministic_and_seed_dependent():
    r = WorldRenderer(32)
    a, b, c = r.render(BASE, 7), r.render(BASE, 7), r.render(BASE, 8)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).sum() > 0


def test_every_class_renders_a_distinct_shape():
    r = WorldRenderer(32)
    imgs = [r.render(BASE.replace(shape=s, domain="photo"), 3) for s in CLASSES]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i].astype(int) - imgs[j].astype(int)).sum() > 500, (CLASSES[i], CLASSES[j])


@pytest.mark.parametrize("domain", ["photo", "sketch", "painting", "cartoon"])
@pytest.mark.parametrize("factor", ["colour", "pattern", "size", "background", "weather", "object", "subject"])
def test_intervention_changes_only_owned_pixels(factor, domain):
    r = WorldRenderer(32)
    for seed in range(4):
        scene = Scene(BASE.replace(domain=domain), seed)
        value = next(v for v in VOCABULARY[factor] if v != getattr(scene.factors, factor))
        after = r.intervene(scene, factor, value)
        before_img, after_img = r.render_scene(scene), r.render_scene(after)
        changed = np.any(before_img != after_img, axis=-1)
        owned = r.owned_mask(scene, factor, value)
        assert changed.any(), f"{factor} edit changed nothing"
        assert not (changed & ~owned).any(), f"{factor} edit changed {int((changed & ~owned).sum())} pixels it does not own"
        # Everything except the factor is identical.
        assert {k: v for k, v in after.factors.as_dict().items() if k != factor} == {
            k: v for k, v in scene.factors.as_dict().items() if k != factor}


def test_intervention_must_change_the_factor():
    r = WorldRenderer(32)
    with pytest.raises(ValueError, match="already"):
        r.intervene(Scene(BASE, 0), "colour", "red")
    with pytest.raises(ValueError, match="unknown value"):
        BASE.replace(colour="teal")


def test_counterfactual_captions_differ_only_in_edited_words(world_cache):
    world = build_world(WorldSpec(n_train=16, n_val=8, n_test=24), world_cache, splits=("iid", "counterfactual"))
    cf = world["counterfactual"].records
    assert len(cf) == 24 * len(FACTORS_BY_EDIT_TYPE)
    assert set(cf.edit_type) == set(FACTORS_BY_EDIT_TYPE)
    for row in cf.itertuples():
        assert row.caption != row.source_caption
        assert row.source_caption.replace(row.original_words, row.edited_words, 1) == row.caption
        assert row.factor in FACTORS_BY_EDIT_TYPE[row.edit_type]
    # Each counterfactual image is the exact re-render of its source with one factor changed.
    iid = world["iid"].records.set_index("id")
    r = WorldRenderer(32)
    for row in cf.head(10).itertuples():
        src = iid.loc[row.source_id]
        f = Factors(**{k: src[k] for k in VOCABULARY})
        expected = r.render(f.replace(**{row.factor: row.edited_value}), int(src.seed))
        np.testing.assert_array_equal(world["counterfactual"].images[row.Index], expected)


def test_planted_correlation_strength(world_cache):
    spec = WorldSpec(n_train=4000, n_val=8, n_test=800, rho_background=0.9)
    world = build_world(spec, world_cache, splits=("train", "ood"))
    train, ood = world["train"].records, world["ood"].records
    agree = (train.background == train.label.map(lambda y: BACKGROUNDS[y])).mean()
    assert 0.88 < agree < 0.92
    agree_ood = (ood.background == ood.label.map(lambda y: BACKGROUNDS[y])).mean()
    assert agree_ood < 0.2
    assert train.label.value_counts().min() == 4000 // len(CLASSES)


def test_cache_round_trip(tmp_path):
    spec = WorldSpec(n_train=8, n_val=8, n_test=8)
    first = build_world(spec, tmp_path, splits=("iid",))["iid"]
    again = build_world(spec, tmp_path, splits=("iid",))["iid"]
    np.testing.assert_array_equal(first.images, again.images)
    assert first.records.equals(again.records)
    assert caption(BASE) == "a photo of a small red striped star on white snow at night next to a tree with a dog"


def test_partial_captions_mention_only_the_named_factors():
    from src.world.grammar import Factors, caption

    f = Factors(shape="star", colour="red", pattern="striped", size="small", background="snow",
                weather="night", domain="photo", object="tree", subject="dog")
    assert caption(f) == "a photo of a small red striped star on white snow at night next to a tree with a dog"
    assert caption(f, {"shape"}) == "a star"
    assert caption(f, {"shape", "background", "domain"}) == "a photo of a star on white snow"
    with pytest.raises(ValueError, match="colr"):
        caption(f, {"shape", "colr"})
