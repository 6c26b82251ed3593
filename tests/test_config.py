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
