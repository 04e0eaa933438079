from pathlib import Path

import pytest

from revelio_svc.config import Config, ConfigError, load_config, replace
from revelio_svc.identity import digest as config_hash

CONFIGS = Path(__file__).resolve().parent.parent / "mlproject" / "configs"


def test_defaults_load_and_are_frozen():
    cfg = load_config()
    assert isinstance(cfg, Config)
    with pytest.raises(Exception):
        cfg.sae.k = 3  # type: ignore[misc]


def test_default_yaml_loads():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.backbone.id == "builtin:shapes-unet"
    assert cfg.sae.hook_point in cfg.extract.hook_points


@pytest.mark.parametrize("override,value", [
    ("sae.k=16", 16), ("sae.lr=1e-3", 1e-3), ("extract.timesteps=[10, 50]", (10, 50)),
    ("extract.hook_points=up_blocks.1", ("up_blocks.1",)), ("tracking.register=false", False),
])
def test_overrides_are_typed(override, value):
    cfg = load_config(None, [override])
    key, _, _ = override.partition("=")
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


def test_unknown_key_names_key_and_lists_known():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sae.kk=3"])
    msg = str(e.value)
    assert "sae.kk" in msg and "expansion" in msg and "k," in msg


def test_unknown_section_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("saee:\n  k: 3\n")
    with pytest.raises(ConfigError, match="unknown key saee"):
        load_config(p)


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sae.variant=relu"])
    assert "sae.variant" in str(e.value) and "topk" in str(e.value) and "batchtopk" in str(e.value)


@pytest.mark.parametrize("override,needle", [
    ("sae.k=abc", "sae.k: expected an integer"),
    ("extract.timesteps=[10, 1000]", "extract.timesteps"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("extract.token_hook_points=[up_blocks.3]", "extract.token_hook_points"),
    ("data.source=hf", "data.id"),
    ("tracking.register=maybe", "tracking.register"),
    ("extract.pooling=[sum]", "extract.pooling[0]"),
    ("sae.latent_pooling=top0", "sae.latent_pooling: must be max, mean or top<q>"),
])
def test_invalid_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_an_l1_probe_refuses_a_second_way_to_be_sparse():
    assert load_config(None, ["probe.penalty=l1"]).probe.penalty == "l1"
    with pytest.raises(ConfigError, match="probe.penalty: l1 already makes the probe sparse"):
        load_config(None, ["probe.penalty=l1", "probe.latents_per_class=8"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["sae.k"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_hash_stable_and_sensitive():
    a, b = load_config(), load_config()
    assert config_hash(a.extract) == config_hash(b.extract)
    assert config_hash(replace(a, **{"extract.noise_seed": 1}).extract) != config_hash(a.extract)


def test_every_shipped_config_validates():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_evaluate_section_is_validated():
    from revelio_svc.config import ConfigError, load_config

    cfg = load_config(None, ["evaluate.ablate=[1,3]", "evaluate.timesteps=[50]"])
    assert cfg.evaluate.ablate == (1, 3) and cfg.evaluate.timesteps == (50,) and not cfg.pipeline.evaluate
    for bad, key in (("evaluate.correlation=0.4", "evaluate.correlation"), ("evaluate.ablate=[0]", "evaluate.ablate"),
                     ("evaluate.timesteps=[1000]", "evaluate.timesteps"), ("evaluate.n_images=0", "evaluate.n_images")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
