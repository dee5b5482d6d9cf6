"""Architectures that cannot work are refused when they are built, in one line naming the problem: malformed
component YAML, outputs of the wrong shape, no recurrent core, a network too large for memory (from a flag or
from a checkpoint's metadata), a very long chain of components."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
import yaml

import metta_agent
from metta_agent.agent.registry import build_agent, resolve_architecture
from metta_agent.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from metta_agent.config import AgentSettings
from metta_agent.env.info import EnvInfo
from metta_agent.games import make_game
from metta_agent.policies.component.graph import SHIPPED_DIR, GraphError, _topological_order

FAST = yaml.safe_load((SHIPPED_DIR / "fast.yaml").read_text())
TRAIN = ["--game", "heart", "--steps", "100", "--quiet"]


def _variant(change):
    spec = copy.deepcopy(FAST)
    change(spec)
    return spec


def _component(spec, name):
    return next(entry for entry in spec["components"] if entry["name"] == name)


def _without_core(spec):
    spec["components"] = [entry for entry in spec["components"] if entry["name"] != "core"]
    for name in ("critic", "actor"):
        _component(spec, name)["sources"] = ["encoded_obs"]


BAD_GRAPHS = {
    "outputs as a list": (lambda s: s.update(outputs=["actor", "critic"]), "'outputs' must name"),
    "outputs as a number": (lambda s: s.update(outputs=5), "'outputs' must name"),
    "outputs naming a number": (lambda s: s.update(outputs={"logits": 1, "value": "critic"}), "unknown component"),
    "parameters as a number": (lambda s: s.update(parameters=5), "'parameters' must be a mapping"),
    "logits and value swapped": (lambda s: s.update(outputs={"logits": "critic", "value": "actor"}),
                                 "output 'logits' ('critic')"),
    "no lstm": (_without_core, "exactly one lstm component"),
    "two lstms": (lambda s: s["components"].insert(7, {"name": "core0", "type": "lstm", "sources": ["encoded_obs"],
                                                        "params": {"hidden_size": 128}}) or
                  _component(s, "core").update(sources=["core0"]), "found 2"),
    "critic fed from obs_box": (lambda s: _component(s, "critic").update(sources=["obs_box"]),
                                "output 'value' ('critic') must give one number per agent"),
    "components as a mapping": (lambda s: s.update(components={"a": 1}), "'components' must be a non-empty list"),
    "a cycle": (lambda s: _component(s, "obs_normalizer").update(sources=["actor"]), "is in a cycle"),
    "a huge layer": (lambda s: _component(s, "fc1")["params"].update(out_features=10**9),
                     "up to component 'fc1'"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_bad_component_graph_is_one_line(case, tmp_path, one_line):
    change, fragment = BAD_GRAPHS[case]
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(_variant(change)))
    one_line(["train", *TRAIN, "--agent", path, "--run-dir", tmp_path / "run"], 2, fragment)
    assert not (tmp_path / "run").exists(), "a refused architecture leaves no run directory"


@pytest.mark.parametrize("agent", ["pytorch/fast", "fast", "pytorch/latent_attn_tiny"])
def test_a_network_too_large_for_memory_is_refused_before_allocation(agent, tmp_path, one_line):
    one_line(["train", *TRAIN, "--agent", agent, "--set", "agent.hidden_size=100000000", "--run-dir", tmp_path / "run"], 2,
             "parameters", "memory available")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_metadata_asks_for_a_huge_network_is_refused(tmp_path, one_line):
    agent = metta_agent.make_agent("pytorch/fast", game="heart", seed=0)
    metadata = {"agent": agent.metadata(), "game": "heart", "config": {"game": {"max_steps": 8}},
                "trainer": {"epoch": 1, "agent_steps": 256, "skipped_updates": 0}}
    metadata["agent"]["settings"]["kwargs"]["hidden_size"] = 100_000_000
    path = save_checkpoint(tmp_path / "huge.pt", metadata, {"model": agent.state_dict()})
    one_line(["eval", path, "--episodes", "1"], 2, "parameters", "memory available")


def test_checkpoint_metadata_that_is_a_json_list_is_refused(tmp_path, one_line):
    agent = metta_agent.make_agent("pytorch/fast", game="heart", seed=0)
    path = save_checkpoint(tmp_path / "good.pt", {"agent": agent.metadata(), "game": "heart"},
                           {"model": agent.state_dict()})
    _, payload = load_checkpoint(path)
    text = json.dumps([1, 2])
    torch.save({**payload, "format": FORMAT, "metadata": text,
                "metadata_sha256": hashlib.sha256(text.encode()).hexdigest()}, tmp_path / "list.pt")
    one_line(["eval", tmp_path / "list.pt"], 2, "unreadable metadata")


def test_building_on_the_meta_device_first_draws_no_random_numbers():
    env = EnvInfo.from_game(make_game("heart"))
    factory, _ = resolve_architecture("pytorch/fast")
    torch.manual_seed(7)
    direct = [p.detach().clone() for p in factory(env).parameters()]
    torch.manual_seed(7)
    checked = list(build_agent(AgentSettings(name="pytorch/fast"), env).policy.parameters())
    assert len(direct) == len(checked) and all(torch.equal(a, b) for a, b in zip(direct, checked))


def test_a_10000_component_chain_in_reverse_order_is_sorted_without_recursion():
    chain = [{"name": f"l{i}", "sources": [f"l{i - 1}"] if i else ["env_obs"]} for i in range(10_000)]
    ordered = _topological_order(list(reversed(chain)), "chain")
    assert [entry["name"] for entry in ordered] == [f"l{i}" for i in range(10_000)]
    loop = [{"name": "a", "sources": ["c"]}, {"name": "b", "sources": ["a"]}, {"name": "c", "sources": ["b"]}]
    with pytest.raises(GraphError, match="a -> c -> b -> a"):
        _topological_order(loop, "loop")


def test_a_pytorch_policy_without_a_core_is_refused(one_line, monkeypatch, tmp_path):
    from metta_agent.agent import registry
    from metta_agent.policies.pytorch.fast import Fast

    class NoCore(Fast):
        def __init__(self, env, hidden_size: int = 128):
            super().__init__(env, hidden_size=hidden_size)
            del self.core

    monkeypatch.setitem(registry.PYTORCH_AGENTS, "pytorch/no_core", NoCore)
    one_line(["train", *TRAIN, "--agent", "pytorch/no_core", "--run-dir", tmp_path / "run"], 2, "no recurrent core")
