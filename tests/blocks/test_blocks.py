import math

import torch
from torch import nn

from metta_agent.blocks.heads import Actor, Critic
from metta_agent.blocks.observation import ObsNormalizer, TokenToBox
from metta_agent.blocks.recurrent import RecurrentCore
from metta_agent.env.info import EnvInfo, Feature
from metta_agent.policies.pytorch.fast import Fast


def tokens(rows):
    """[(location, feature, value), ...] padded to 6 tokens with 0xFF."""
    padded = rows + [(0xFF, 0xFF, 0xFF)] * (6 - len(rows))
    return torch.tensor([padded], dtype=torch.uint8)


def test_token_to_box_places_tokens_and_drops_invalid_ones():
    box_of = TokenToBox(num_features=4, height=5, width=5)
    obs = tokens([(0x12, 1, 7), (0x00, 3, 9), (0xFE, 2, 5), (0x01, 200, 4), (0x77, 0, 8)])
    before = obs.clone()
    box = box_of(obs)
    assert torch.equal(obs, before), "the input must not be modified"
    assert box.shape == (1, 4, 5, 5)
    assert box[0, 1, 1, 2] == 7  # row 1, col 2
    assert box[0, 3, 0, 0] == 9
    assert box[0, 2, 2, 2] == 5  # global token in the centre cell
    # out-of-range feature 200 and out-of-window location (7, 7) are dropped; nothing else is set
    assert box.count_nonzero() == 3
    assert box[0, :, 0, 0].tolist() == [0, 0, 0, 9]


def test_token_to_box_ignores_padding_even_in_cell_zero():
    box = TokenToBox(4, 5, 5)(tokens([]))
    assert box.count_nonzero() == 0


def test_normalizer_divides_each_feature_plane():
    normalizer = ObsNormalizer(3)
    normalizer.set_normalizations(torch.tensor([1.0, 2.0, 4.0]))
    box = torch.full((1, 3, 2, 2), 8.0)
    assert normalizer(box)[0, :, 0, 0].tolist() == [8.0, 4.0, 2.0]


def test_lstm_core_init_orthogonal_weights_zero_biases_and_forget_gate_one():
    core = RecurrentCore(128, 128, 2)
    for name, param in core.lstm.named_parameters():
        if name.startswith("bias"):
            # Gate order input, forget, cell, output: only the forget gate starts open (+1).
            expected = torch.zeros(4 * 128)
            if name.startswith("bias_ih"):
                expected[128:256] = 1.0
            assert torch.equal(param.detach(), expected)
        else:
            gram = param.T @ param  # [512,128] or [512,128]: columns orthonormal
            assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4)


def test_critic_and_actor_shapes_and_init():
    critic, actor = Critic(), Actor()
    assert critic.critic_1.bias.abs().max() == 0
    embeddings = actor.action_embeddings.embedding.weight
    assert math.isclose(float(embeddings.abs().max()), 0.1, rel_tol=1e-5)
    bound = 1 / math.sqrt(512)
    assert actor.bilinear_weight.abs().max() <= bound and actor.bilinear_bias.abs().max() <= bound
    actor.action_embeddings.set_action_rows([1, 2, 3])
    assert actor(torch.randn(7, 128)).shape == (7, 3)
    assert critic(torch.randn(7, 128)).shape == (7,)


def reference_env(num_features: int = 25) -> EnvInfo:
    features = tuple(Feature(i, f"f{i}", 1.0) for i in range(num_features))
    return EnvInfo(features, ("noop", "move_north"), 11, 11, 200, 1)


def test_fast_parameter_counts_match_the_reference():
    fast = Fast(reference_env(25))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(fast) == 574_978
    assert count(fast.core) == 264_192
    assert count(fast.critic) + count(fast.actor) == 208_962


def test_a_convolution_with_one_output_position_runs_as_a_matrix_product_with_the_same_numbers():
    from metta_agent.blocks.conv import Conv2d

    torch.manual_seed(0)
    ours = Conv2d(64, 32, 3)
    reference = nn.Conv2d(64, 32, 3)
    reference.load_state_dict(ours.state_dict())
    for shape in ((50, 64, 3, 3), (7, 64, 5, 4)):  # one output position (the matrix product), then 3x2 (conv)
        x = torch.randn(shape, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        out, want = ours(x), reference(x_ref)
        assert out.shape == want.shape
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        out.square().sum().backward()
        want.square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-4)
        ours.zero_grad()
        reference.zero_grad()
