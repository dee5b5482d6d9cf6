"""The token convolution computes conv(normalizer(token_to_box(tokens))) from the tokens: same outputs and
gradients as the dense path, a table cache that follows the weight, and the graph's fusion of the chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metta_agent import make_agent, make_game
from metta_agent.blocks.observation import ObsNormalizer, TokenToBox
from metta_agent.blocks.token_conv import token_conv
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.policies.component.graph import ComponentPolicy, load_spec


def arena_tokens(steps: int = 6) -> torch.Tensor:
    """Real arena observations (walls, stations, agents, global tokens, padding), as the agent reads them."""
    game = make_game("arena")
    agent = make_agent("pytorch/fast", game)
    observations = []
    with VecEnv(game, 2, seed=5) as env:
        obs = env.reset()
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):
            actions = torch.randint(0, len(env.info.action_names), (env.num_agents,), generator=generator)
            obs, *_ = env.step(actions.numpy())
            observations.append(torch.from_numpy(obs.copy()))
    return agent.read_tokens(torch.cat(observations))


def blocks(kernel: int, stride: int, features: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    env = EnvInfo.from_game(make_game("arena"))
    features = features or env.num_features
    box = TokenToBox(features, env.obs_height, env.obs_width)
    normalizer = ObsNormalizer(features, env.normalizations)
    conv = nn.Conv2d(features, 16, kernel, stride=stride)
    return box, normalizer, conv


@pytest.mark.parametrize("kernel,stride", [(5, 3), (3, 1), (2, 2), (4, 3)])
def test_token_conv_matches_the_dense_path_with_gradients(kernel, stride):
    tokens = arena_tokens()
    box, normalizer, conv = blocks(kernel, stride)
    dense = conv(normalizer(box(tokens)))
    (dense.square().sum()).backward()
    dense_grads = [conv.weight.grad.clone(), conv.bias.grad.clone()]
    conv.zero_grad()
    sparse = token_conv(tokens, box, normalizer, conv)
    (sparse.square().sum()).backward()
    assert sparse.shape == dense.shape
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    for got, want in zip((conv.weight.grad, conv.bias.grad), dense_grads):
        # Sums over thousands of positions in another order: float rounding relative to the largest entry.
        torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-3)


def test_tokens_the_box_drops_are_dropped_and_repeats_are_summed():
    box, normalizer, conv = blocks(5, 3, features=8)
    tokens = torch.tensor([[
        [0x55, 3, 10],   # row 5, column 5
        [0x55, 3, 10],   # the same (feature, cell) again: summed
        [0xFE, 2, 7],    # a global token: the centre cell
        [0x5C, 1, 9],    # column 12: outside the 11-wide window
        [0x11, 8, 9],    # feature 8 >= F
        [0xFF, 0, 0],    # padding
    ]], dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(token_conv(tokens, box, normalizer, conv), conv(normalizer(box(tokens))))


def test_the_rollout_table_follows_in_place_weight_updates():
    tokens = arena_tokens(steps=2)
    box, normalizer, conv = blocks(5, 3, seed=1)
    with torch.inference_mode():  # the first call of a process may come from a rollout
        token_conv(tokens, box, normalizer, conv)
    token_conv(tokens, box, normalizer, conv).sum().backward()  # ...and training must still work after it
    with torch.no_grad():
        first = token_conv(tokens, box, normalizer, conv)
        assert torch.equal(token_conv(tokens, box, normalizer, conv), first)  # served from the cache
        conv.weight.mul_(-2.0)  # as an optimizer step does: in place
        torch.testing.assert_close(token_conv(tokens, box, normalizer, conv), conv(normalizer(box(tokens))),
                                   atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(token_conv(tokens, box, normalizer, conv), conv(normalizer(box(tokens))),
                                   atol=1e-5, rtol=1e-5)


def test_a_padded_convolution_takes_the_dense_path():
    tokens = arena_tokens(steps=1)
    box, normalizer, _ = blocks(3, 1)
    conv = nn.Conv2d(box.num_features, 8, 3, padding=1)
    with torch.no_grad():
        assert torch.equal(token_conv(tokens, box, normalizer, conv), conv(normalizer(box(tokens))))


def test_the_component_graph_runs_box_normalizer_and_conv_as_one_step():
    env = EnvInfo.from_game(make_game("arena"))
    spec, _ = load_spec("fast")
    policy = ComponentPolicy(env, spec)
    steps = {name: fused for name, _, fused in policy._steps}
    assert steps["cnn1"] == ("obs_box", "obs_normalizer")
    assert "obs_box" not in steps and "obs_normalizer" not in steps
    assert "components.obs_normalizer.block.scale" in policy.state_dict()  # the modules and their state stay

    # When another component reads the normalised box, nothing is fused.
    spec["components"].append({"name": "box_flat", "type": "flatten", "sources": ["obs_normalizer"]})
    unfused = ComponentPolicy(env, spec)
    assert all(fused is None for _, _, fused in unfused._steps)
