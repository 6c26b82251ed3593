import copy

import pytest
import yaml

from pipelines.params import load_params
from yolov1.config import ConfigError, Params, flatten, params_from_dict, params_to_dict


def test_repo_params_load(repo_params_dict):
    params = params_from_dict(repo_params_dict)
    assert isinstance(params, Params)
    assert params.model.grid_size == 7 and params.model.input_size == 448
    assert len(params.data.classes) == params.model.num_classes == 20
    assert isinstance(params.data.archives, tuple) and params.data.archives[0].mirrors  # lists become tuples


def test_round_trip(repo_params_dict):
    params = params_from_dict(repo_params_dict)
    assert params_from_dict(params_to_dict(params)) == params


def test_frozen(repo_params_dict):
    params = params_from_dict(repo_params_dict)
    with pytest.raises(AttributeError):
        params.model.grid_size = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("model", "grid_size"), "seven", "model.grid_size: expected int, got 'seven'"),
        (("model", "grid_size"), 7.0, "model.grid_size: expected int, got float 7.0"),
        (("model", "batch_norm"), "yes", "model.batch_norm: expected bool, got 'yes'"),
        (("train", "lr"), "0.01", "train.lr: expected float, got '0.01'"),
        (("train", "optimizer"), "adam", "train.optimizer: expected one of ['sgd', 'adamw'], got 'adam'"),
        (("train", "loss", "lambda_coord"), None, "train.loss.lambda_coord: expected float, got NoneType None"),
        (("data", "classes"), "cat", "data.classes: expected a list, got 'cat'"),
    ],
)
def test_wrong_types_name_the_key(repo_params_dict, path, value, message):
    raw = copy.deepcopy(repo_params_dict)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value) == message


def test_nested_list_item_named(repo_params_dict):
    raw = copy.deepcopy(repo_params_dict)
    raw["data"]["archives"][1]["size"] = "big"
    with pytest.raises(ConfigError, match=r"data\.archives\[1\]\.size"):
        params_from_dict(raw)


def test_unknown_and_missing_keys(repo_params_dict):
    raw = copy.deepcopy(repo_params_dict)
    raw["model"]["grid"] = 7
    with pytest.raises(ConfigError, match=r"^model\.grid: unknown key"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    del raw["train"]["epochs"]
    with pytest.raises(ConfigError, match=r"^train\.epochs: missing key$"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    del raw["eval"]
    with pytest.raises(ConfigError, match=r"^eval: missing key$"):
        params_from_dict(raw)


def test_cross_field_checks(repo_params_dict):
    raw = copy.deepcopy(repo_params_dict)
    raw["model"]["num_classes"] = 3
    with pytest.raises(ConfigError, match=r"model\.num_classes: is 3 but data\.classes lists 20"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    raw["model"]["input_size"] = 450
    with pytest.raises(ConfigError, match=r"model\.input_size"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    raw["train"]["milestones"] = [0.8, 0.5]
    with pytest.raises(ConfigError, match=r"train\.milestones"):
        params_from_dict(raw)


def test_load_params_names_the_file(tmp_path, repo_params_dict):
    raw = copy.deepcopy(repo_params_dict)
    raw["model"]["grid_size"] = "seven"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params\.yaml: model\.grid_size: expected int"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_flatten(repo_params_dict):
    flat = flatten(params_from_dict(repo_params_dict))
    assert flat["train.loss.lambda_coord"] == 5.0
    assert flat["model.grid_size"] == 7


# --- hostile params: YAML bombs, huge values in errors, out-of-range numbers -------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)  # 9 levels of 9 aliases each: 9**9 = 387 M strings once expanded


def test_alias_bomb_is_refused_fast_naming_file_and_line(tmp_path):
    import time

    path = tmp_path / "params.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 2048
    start = time.process_time()
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert time.process_time() - start < 1.0  # CPU time, not wall: the old loader ran 90 s and grew to 1.3 GB
    message = str(err.value)
    assert message.startswith(f"{path}: not valid YAML: line 1, column 4: YAML anchor 'a' is not allowed")
    assert len(message) < 300


def test_alias_without_anchor_in_a_later_line_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: 1\nmodel:\n  x: *nope\n")  # an undefined alias is still an alias: refused at line 3
    with pytest.raises(ConfigError, match=r"line 3, column 6: YAML alias 'nope' is not allowed"):
        load_params(path)


def test_oversized_and_binary_params_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than 1048576 bytes"):
        load_params(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"model: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not UTF-8 text \(byte 7\)"):
        load_params(binary)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML"):
        load_params(deep)


def test_huge_values_are_cut_in_errors(repo_params_dict):
    nested: object = "x" * 1000
    for _ in range(6):
        nested = [nested] * 50  # the expanded shape of a depth-6 bomb; its full repr would be ~15 GB
    for path, value in [(("model", "grid_size"), nested), (("model", "head"), "y" * 10**6),
                        (("train", "gpus"), ["x" * 10**5]), (("data", "test_sets"), ["z" * 10**6])]:
        raw = copy.deepcopy(repo_params_dict)
        raw[path[0]][path[1]] = value
        with pytest.raises(ConfigError) as err:
            params_from_dict(raw)
        assert str(err.value).startswith(".".join(path)) and len(str(err.value)) < 400, str(err.value)[:500]
    raw = copy.deepcopy(repo_params_dict)
    raw["model"]["k" * 10**5] = 1  # an unknown key is a value too
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value).startswith("model.'kkk") and len(str(err.value)) < 600


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", [("train", "lr"), ("register", "min_improvement"), ("eval", "score_threshold"),
                                 ("data", "augment", "scale"), ("train", "loss", "lambda_noobj")])
def test_non_finite_floats_are_refused_naming_the_key(repo_params_dict, key, value):
    raw = copy.deepcopy(repo_params_dict)
    node = raw
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(ConfigError, match=rf"^{'.'.join(key)}: must be a finite number, got {value!r}$"):
        params_from_dict(raw)


def test_nan_from_yaml_file_names_file_and_key(tmp_path, repo_params_dict):
    text = yaml.safe_dump(repo_params_dict).replace("lr: 0.01\n", "lr: .nan\n", 1)
    assert "lr: .nan" in text
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"p\.yaml: train\.lr: must be a finite number, got nan"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        (("train", "lr"), 0.0, "in (0, 10]"),
        (("train", "lr"), -0.01, "in (0, 10]"),
        (("train", "momentum"), -0.1, "in [0, 1)"),
        (("train", "momentum"), 1.0, "in [0, 1)"),
        (("train", "weight_decay"), -1e-4, "in [0, 1]"),
        (("train", "epochs"), 0, "in [1, 1000000]"),
        (("train", "grad_accumulation"), 0, "in [1, 1024]"),
        (("train", "checkpoint_every"), 0, "in [1, 1000000]"),
        (("train", "freeze_backbone_epochs"), -1, "in [0, 1000000]"),
        (("train", "backbone_lr_multiplier"), -1.0, "in [0, 100]"),
        (("train", "num_workers"), -1, "in [0, 256]"),
        (("train", "seed"), -5, "in [0, 4294967295]"),
        (("train", "gamma"), 0.0, "in (0, 1]"),
        (("train", "grad_clip_norm"), -1.0, ">= 0"),
        (("register", "min_improvement"), -0.01, "in [0, 1]"),
        (("register", "min_map"), 1.5, "in [0, 1]"),
        (("eval", "max_detections"), -1, "in [1, 100000]"),
        (("eval", "max_detections"), 0, "in [1, 100000]"),
        (("eval", "score_threshold"), 1.01, "in [0, 1]"),
        (("eval", "draw_score_threshold"), -0.1, "in [0, 1]"),
        (("eval", "nms_iou_threshold"), 2.0, "in [0, 1]"),
        (("eval", "num_pictures"), -1, "in [0, 1024]"),
        (("model", "dropout"), 1.0, "in [0, 1)"),
        (("model", "width_multiplier"), 0.0, "in (0, 4]"),
        (("model", "width_multiplier"), 8.0, "in (0, 4]"),
        (("model", "head_hidden"), 65536, "in [1, 16384]"),
        (("data", "augment", "exposure"), 0.5, "in [1, 10]"),
        (("serve", "max_image_pixels"), 0, "in [1, 1073741824]"),
        (("serve", "max_rows"), 10**9, "in [1, 100000]"),
        (("serve", "max_request_bytes"), -1, "in [1, 2147483648]"),
        (("pretrain", "val_fraction"), 1.0, "in [0, 1)"),
        (("pretrain", "lr"), 0.0, "in (0, 10]"),
        (("pretrain", "momentum"), -0.5, "in [0, 1)"),
        (("pretrain", "hue"), 0.6, "in [0, 0.5]"),
        (("pretrain", "saturation"), 0.5, "in [1, 10]"),
        (("train", "ema_decay"), 1.0, "in [0, 1)"),
        (("train", "ema_decay"), -0.1, "in [0, 1)"),
    ],
)
def test_out_of_range_numbers_name_the_key_and_the_rule(repo_params_dict, key, value, rule):
    raw = copy.deepcopy(repo_params_dict)
    node = raw
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value) == f"{'.'.join(key)}: must be {rule}, got {value!r}"


def test_gpus_archive_size_and_int_overflow(repo_params_dict):
    for value, message in [(0, r'train\.gpus: must be "auto" or in \[1, 1024\], got 0'),
                           ("two", r"train\.gpus: 'two' matches none of")]:
        raw = copy.deepcopy(repo_params_dict)
        raw["train"]["gpus"] = value
        with pytest.raises(ConfigError, match=message):
            params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    raw["data"]["archives"][2]["size"] = 0
    with pytest.raises(ConfigError, match=r"^data\.archives\[2\]\.size: must be in \[1, 2\*\*44\]"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    raw["train"]["batch_size"] = 10**30
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 1000000000000000000000000000000 does not fit"):
        params_from_dict(raw)
    raw = copy.deepcopy(repo_params_dict)
    raw["train"]["lr"] = 10**400  # an int too big for a float
    with pytest.raises(ConfigError, match=r"^train\.lr: .* is out of the float range"):
        params_from_dict(raw)


def test_model_config_from_dict_bounds_a_hostile_checkpoint_config(repo_params_dict):
    from yolov1.config import ModelConfig, model_config_from_dict

    good = model_config_from_dict(repo_params_dict["model"])
    assert isinstance(good, ModelConfig) and good == params_from_dict(repo_params_dict).model
    # The 400-byte checkpoint: width 8 and a 65536-wide head would allocate > 2.7 GB.
    for change, message in [({"width_multiplier": 8.0}, r"model\.width_multiplier: must be in \(0, 4\]"),
                            ({"head_hidden": 65536}, r"model\.head_hidden: must be in \[1, 16384\]"),
                            ({"grid_size": "7"}, r"model\.grid_size: expected int, got '7'"),
                            ({"input_size": 450}, r"model\.input_size: input_size / grid_size must be"),
                            # 4096 hidden x (4096 channels x 32 x 32 cells + 32 x 32 x (5 x 2 + 20)) = 17.3 G
                            ({"grid_size": 32, "input_size": 1024, "width_multiplier": 4.0},
                             r"model\.head_hidden: the fc head would have 17,305,698,304 weights")]:
        with pytest.raises(ConfigError, match=message):
            model_config_from_dict({**repo_params_dict["model"], **change})


def test_every_numeric_field_has_a_range():
    import dataclasses as dc

    from yolov1 import config

    checked = {f"{section}.{key}" for section, ranges in config._SECTION_RANGES.items() for key in ranges}
    checked |= {"train.gpus", "data.archives.size"}

    def numeric(tp, prefix):
        for f in dc.fields(tp):
            hint = typing.get_type_hints(tp)[f.name]
            if dc.is_dataclass(hint):
                yield from numeric(hint, f"{prefix}{f.name}.")
            elif typing.get_origin(hint) is tuple and dc.is_dataclass(typing.get_args(hint)[0]):
                yield from numeric(typing.get_args(hint)[0], f"{prefix}{f.name}.")
            elif hint in (int, float) or int in typing.get_args(hint):
                yield f"{prefix}{f.name}"

    import typing

    assert set(numeric(config.Params, "")) - checked == set()
