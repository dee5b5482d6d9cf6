import pytest
import torch
import yaml

from metta_agent import make_agent, make_game
from metta_agent.agent.transfer import transfer_weights
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError
from metta_agent.policies.component.graph import SHIPPED_DIR, ComponentPolicy, load_spec


def fast_spec():
    return yaml.safe_load((SHIPPED_DIR / "fast.yaml").read_text())


def build(spec):
    return ComponentPolicy(EnvInfo.from_game(make_game("heart")), spec, "test.yaml")


def component(spec, name):
    return next(c for c in spec["components"] if c["name"] == name)


def test_unknown_component_type_is_named():
    spec = fast_spec()
    component(spec, "fc1")["type"] = "os.system"
    with pytest.raises(UsageError, match="component 'fc1' has unknown type 'os.system'; known types: actor"):
        build(spec)


def test_missing_source_is_named():
    spec = fast_spec()
    component(spec, "fc1")["sources"] = ["nowhere"]
    with pytest.raises(UsageError, match="component 'fc1' has missing source 'nowhere'"):
        build(spec)


def test_cycle_is_named():
    spec = fast_spec()
    component(spec, "cnn1")["sources"] = ["fc1"]
    with pytest.raises(UsageError, match="is in a cycle: .*cnn1.*fc1|is in a cycle: .*fc1.*cnn1"):
        build(spec)


def test_shape_mismatch_is_named():
    spec = fast_spec()
    component(spec, "fc1")["sources"] = ["cnn2"]  # a 4-D conv output into a linear layer expecting flat input
    component(spec, "encoded_obs")["params"]["out_features"] = 128
    with pytest.raises(UsageError, match="component '(fc1|encoded_obs|core)'.*cannot take its inputs"):
        build(spec)


def test_unknown_parameter_is_named():
    spec = fast_spec()
    component(spec, "cnn1")["params"]["kernal_size"] = 3
    with pytest.raises(UsageError, match="component 'cnn1' \\(conv2d\\) has unknown parameter 'kernal_size'"):
        build(spec)


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_spec(str(path))
    assert not (tmp_path / "pwned").exists()


def test_user_yaml_with_clip_scale_builds_and_scales_the_bound(tmp_path):
    spec = fast_spec()
    component(spec, "fc1")["clip_scale"] = 0.5
    component(spec, "cnn1")["clip_scale"] = 0
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    agent = make_agent(str(path), game="heart", clip_range=1.0)
    with torch.no_grad():
        for parameter in agent.parameters():
            parameter.mul_(100)
    agent.clip_weights()
    layers = dict(agent.policy.clipped_layers())
    fc1_bound = 0.5 * agent.weights.initial_weight("fc1").abs().max()
    assert torch.isclose(layers["fc1"][0].weight.abs().max(), fc1_bound)
    assert layers["cnn1"][0].weight.abs().max() > 50 * agent.weights.initial_weight("cnn1").abs().max()


def test_architecture_parameters_reach_both_forms():
    component_form = make_agent("fast", game="heart", hidden_size=64, cnn_channels=32)
    pytorch_form = make_agent("pytorch/fast", game="heart", hidden_size=64, cnn_channels=32)
    assert component_form.total_params == pytorch_form.total_params
    assert component_form.lstm_shape == (2, 64)
    with pytest.raises(UsageError, match="unknown agent parameter 'hidden' for 'fast'; allowed: .*cnn_channels, hidden_size"):
        make_agent("fast", game="heart", hidden=3)


def test_transfer_between_different_architectures_is_refused():
    with pytest.raises(UsageError, match="cannot transfer"):
        transfer_weights(make_agent("fast", game="heart"), make_agent("pytorch/latent_attn_tiny", game="heart"))


def test_a_component_checkpoint_loads_as_the_pytorch_form_and_back(tmp_path):
    from tensordict import TensorDict

    from metta_agent import contract as keys
    from metta_agent import load_agent
    from metta_agent.checkpoint import save_checkpoint

    agent = make_agent("fast", game="heart", seed=3)
    path = save_checkpoint(tmp_path / "checkpoints" / "epoch_000001.pt", {"agent": agent.metadata(), "game": "heart"},
                           {"model": agent.state_dict()})
    as_pytorch = load_agent(str(path), as_agent="pytorch/fast")
    assert as_pytorch.settings.name == "pytorch/fast"
    obs = torch.full((4, 200, 3), 0xFF, dtype=torch.uint8)
    obs[:, 0] = torch.tensor([0x55, 6, 2], dtype=torch.uint8)
    outputs = []
    for form in (agent, as_pytorch, load_agent(str(path))):
        td = TensorDict({keys.ENV_OBS: obs, keys.STARTS: torch.ones(4), keys.ACTIONS: torch.zeros(4, dtype=torch.long)},
                        batch_size=[4])
        outputs.append(form(td)[keys.FULL_LOG_PROBS])
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
