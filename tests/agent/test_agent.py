import pytest
import torch
from tensordict import TensorDict

from metta_agent import contract as keys
from metta_agent import make_agent, make_game
from metta_agent.env import VecEnv
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError


@pytest.fixture(scope="module")
def heart_rollout():
    """Real observations and restart flags: 2 heart envs (8 agents), 40 steps, short staggered episodes."""
    game = make_game("heart", max_steps=12)
    with VecEnv(game, num_envs=2, seed=3) as env:
        obs = [torch.from_numpy(env.reset().copy())]
        starts = [torch.ones(env.num_agents, dtype=torch.bool)]
        generator = torch.Generator().manual_seed(0)
        for _ in range(39):
            actions = torch.randint(0, len(env.info.action_names), (env.num_agents,), generator=generator)
            next_obs, _, terminals, truncations = env.step(actions.numpy())
            obs.append(torch.from_numpy(next_obs.copy()))
            starts.append(torch.from_numpy(terminals | truncations))
    return game, torch.stack(obs, 1), torch.stack(starts, 1)  # [N, T, M, 3], [N, T]


def rollout(agent, obs, starts):
    """Act step by step as the trainer does; return the per-step outputs stacked as [N, T]."""
    n, steps = starts.shape
    outputs = []
    agent.reset_memory()
    with torch.inference_mode():
        for t in range(steps):
            td = TensorDict({keys.ENV_OBS: obs[:, t], keys.STARTS: starts[:, t]}, batch_size=[n])
            outputs.append(agent(td))
    return torch.stack(outputs, 1)


def test_rollout_writes_the_contract_keys(heart_rollout):
    game, obs, starts = heart_rollout
    agent = make_agent("pytorch/fast", game=game)
    out = rollout(agent, obs[:, :2], starts[:, :2])
    n = obs.shape[0]
    assert out[keys.ACTIONS].dtype == torch.long and out[keys.ACTIONS].shape == (n, 2)
    assert out[keys.FULL_LOG_PROBS].shape == (n, 2, 5)
    assert out[keys.LSTM_H].shape == (n, 2, 2, 128)
    assert set(out.keys()) >= {keys.ACT_LOG_PROB, keys.VALUES, keys.LSTM_C}
    probabilities = out[keys.FULL_LOG_PROBS].exp().sum(-1)
    assert torch.allclose(probabilities, torch.ones_like(probabilities), atol=1e-5)


def test_state_is_kept_per_agent_by_agent_rows(heart_rollout):
    game, obs, starts = heart_rollout
    agent = make_agent("pytorch/fast", game=game)
    together = rollout(agent, obs[:, :5], starts[:, :5])
    # The same agents, stepped as two groups with their global ids, must see the same state.
    agent.reset_memory()
    halves = []
    with torch.inference_mode():
        for t in range(5):
            for rows in (torch.arange(0, 4), torch.arange(4, 8)):
                td = TensorDict({keys.ENV_OBS: obs[rows, t], keys.STARTS: starts[rows, t],
                                 keys.AGENT_ROWS: rows}, batch_size=[4])
                halves.append(agent(td)[keys.FULL_LOG_PROBS])
    last = torch.cat(halves[-2:])
    assert torch.allclose(last, together[keys.FULL_LOG_PROBS][:, 4], atol=1e-6)


def test_episode_start_zeroes_the_state_and_frozen_memory_is_not_stored(heart_rollout):
    game, obs, starts = heart_rollout
    agent = make_agent("pytorch/fast", game=game)
    n = obs.shape[0]
    rollout(agent, obs[:, :3], starts[:, :3])
    with torch.inference_mode():
        flags = torch.zeros(n, dtype=torch.bool)
        flags[0] = True
        td = TensorDict({keys.ENV_OBS: obs[:, 3], keys.STARTS: flags},
                        batch_size=[n])
        with agent.memory_frozen():
            first = agent(td.clone())[keys.FULL_LOG_PROBS]
            second = agent(td.clone())[keys.FULL_LOG_PROBS]
        agent.reset_memory()
        fresh = agent(td.clone())[keys.FULL_LOG_PROBS]
    assert torch.equal(first, second), "frozen steps must not advance the memory"
    assert torch.equal(first[0], fresh[0]), "a new episode starts from a zero state"
    assert not torch.equal(first[1:], fresh[1:]), "the other agents keep their memory"


def test_training_segments_reproduce_rollout_log_probs_with_restarts(heart_rollout):
    game, obs, starts = heart_rollout
    agent = make_agent("pytorch/fast", game=game)
    # Gate biases of 1 make the carried state move the outputs by far more than the tolerance below, so a
    # restart that training ignored shows (at the default initialisation the state barely matters yet).
    with torch.no_grad():
        for name, param in agent.policy.core.lstm.named_parameters():
            if name.startswith("bias"):
                param.fill_(1.0)
    out = rollout(agent, obs, starts)
    n, steps = starts.shape
    bptt = 10  # 4 segments per agent; episodes of <= 12 steps restart inside segments
    assert starts[:, 1:].any()
    segments = out.reshape(n * steps // bptt, bptt)
    assert segments[keys.STARTS][:, 1:].any(), "the data must contain in-segment restarts"
    train_td = segments.select(keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C).clone()
    agent(train_td)
    assert torch.allclose(train_td[keys.ACT_LOG_PROB], segments[keys.ACT_LOG_PROB], atol=1e-5)
    assert torch.allclose(train_td[keys.VALUES], segments[keys.VALUES], atol=1e-5)
    assert train_td[keys.ENTROPY].shape == (n * steps // bptt, bptt)

    ignored = segments.select(keys.ENV_OBS, keys.STARTS, keys.ACTIONS, keys.LSTM_H, keys.LSTM_C).clone()
    ignored[keys.STARTS][:, 1:] = False
    agent(ignored)
    assert (ignored[keys.ACT_LOG_PROB] - segments[keys.ACT_LOG_PROB]).abs().max() > 1e-3


def test_clip_weights_bounds_each_clipped_layer_and_spares_the_rest():
    agent = make_agent("pytorch/fast", game="heart", clip_range=0.5)
    lstm_before = agent.policy.core.lstm.weight_ih_l0.detach().clone()
    with torch.no_grad():
        for parameter in agent.parameters():
            parameter.mul_(10)
    agent.clip_weights()
    for name in agent.weights.layer_names:
        module = dict(agent.policy.clipped_layers())[name][0]
        bound = 0.5 * agent.weights.initial_weight(name).abs().max()
        assert module.weight.abs().max() <= bound + 1e-7, name
        assert module.bias.abs().max() >= 0  # biases untouched (they were zero-initialised)
    assert torch.allclose(agent.policy.core.lstm.weight_ih_l0, lstm_before * 10)


def test_l2_init_loss_is_zero_at_init_and_has_gradient():
    agent = make_agent("pytorch/fast", game="heart", l2_init_scale=2.0)
    assert float(agent.l2_init_loss()) == 0
    with torch.no_grad():
        agent.policy.fc1.weight.add_(0.1)
    loss = agent.l2_init_loss()
    expected = 2.0 * 0.01 * agent.policy.fc1.weight.numel()
    assert abs(float(loss) - expected) < 1e-3 * expected
    loss.backward()
    assert agent.policy.fc1.weight.grad.abs().sum() > 0


def test_weight_metrics_cover_the_clipped_layers():
    metrics = make_agent("pytorch/fast", game="heart").compute_weight_metrics()
    assert "weights/effective_rank/cnn1" in metrics and "weights/spectrum_loglog_r2/actor_1" in metrics
    assert metrics["weights/condition_ratio/critic_1"] >= 1


def test_second_game_remaps_features_and_actions_by_name():
    agent = make_agent("pytorch/fast", game="heart")
    heart, arena = EnvInfo.from_game(make_game("heart")), EnvInfo.from_game(make_game("arena"))
    rows = dict(agent.action_rows)
    agent.initialize_to_environment(arena.features, list(reversed(arena.action_names)))
    assert {name: agent.action_rows[name] for name in rows} == rows
    heart_ids = {f.name: f.id for f in heart.features}
    for feature in arena.features:
        expected = heart_ids.get(feature.name, 255)
        assert int(agent.feature_remap[feature.id]) == expected, feature.name


def test_unknown_agent_parameter_names_the_allowed_ones():
    with pytest.raises(UsageError, match="unknown agent parameter 'hidden'.*clip_range.*hidden_size"):
        make_agent("pytorch/fast", game="heart", hidden=3)
    with pytest.raises(UsageError, match="unknown agent 'nope'"):
        make_agent("nope", game="heart")


def test_object_types_are_read_one_hot_and_matched_by_name_across_games():
    from metta_agent.env.info import EnvInfo

    arena = make_game("arena")
    env = EnvInfo.from_game(arena)
    feature_id = {f.name: f.id for f in env.features}
    assert {f.normalization for f in env.features if f.name.startswith("tag=")} == {1.0}
    assert next(f for f in env.features if f.name == "inv:ore_red").normalization == 10.0
    with VecEnv(arena, num_envs=1, seed=0) as vec:
        tokens = torch.from_numpy(vec.reset().copy())
    tags = tokens[..., 1] == feature_id["tag"]
    wall_index = arena.game.id_map().tag_names().index("type:wall")
    walls = tags & (tokens[..., 2] == wall_index)
    assert walls.any() and (tags & (tokens[..., 2] == 0)).any(), "walls and agents (tag value 0) are in view"

    arena_agent = make_agent("pytorch/fast", game=arena)
    read = arena_agent.read_tokens(tokens)
    assert torch.equal(read[walls][:, 1], torch.full((int(walls.sum()),), feature_id["tag=type:wall"], dtype=torch.uint8))
    assert bool((read[tags][:, 2] == 1).all()), "every type token has value 1: agents are no longer invisible"
    assert torch.equal(read[~tags], tokens[~tags])

    # An agent of another game, where walls have another tag index, reads a wall as its own wall feature.
    heart_agent = make_agent("pytorch/fast", game="heart")
    heart_wall = heart_agent.original_features["tag=type:wall"].id
    heart_agent.initialize_to_environment(env.features, env.action_names)
    assert bool((heart_agent.read_tokens(tokens)[walls][:, 1] == heart_wall).all())
