"""``ComponentPolicy``: builds a graph of named components from a YAML spec and runs it.

Schema (see the shipped ``fast.yaml``)::

    name: fast
    parameters: {hidden_size: 128}          # architecture kwargs with defaults; "$hidden_size" refers to one
    components:
      - name: cnn1                          # unique; becomes the weight-clipping / metrics layer name
        type: conv2d                        # one of COMPONENT_TYPES
        sources: [obs_normalizer]           # earlier components, "env_obs", or "component.field"
        params: {out_channels: 64, kernel_size: 5, stride: 3}
        clip_scale: 1.0                     # optional: per-layer clip factor (0 exempts the layer)
    outputs: {logits: actor, value: critic}

The graph is checked when it is built: unknown types or parameters, missing sources, cycles and shape
errors are reported with the component's name.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from metta_agent import contract as keys
from metta_agent.blocks.heads import Actor
from metta_agent.blocks.recurrent import LSTMState, RecurrentCore
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError, first_line
from metta_agent.files import read_text_file
from metta_agent.param_budget import available_memory, check_parameter_budget, meta_parameter_count
from metta_agent.policies.component.components import (
    COMPONENT_TYPES,
    SegmentContext,
    required_parameters,
    run_token_conv,
    type_parameters,
)

GRAPH_INPUTS = (keys.ENV_OBS,)
COMPONENT_KEYS = {"name", "type", "sources", "params", "clip_scale"}
SPEC_KEYS = {"name", "description", "parameters", "components", "outputs"}
SHIPPED_DIR = Path(__file__).parent


class GraphError(UsageError):
    """A component graph that cannot be built; the message names the file and the component."""


def shipped_architectures() -> list[str]:
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.yaml"))


def load_spec(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A shipped architecture by name, or a user's YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SHIPPED_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(f"unknown component architecture '{name_or_path}'")
    if not path.is_file():
        raise UsageError(f"component YAML '{name_or_path}' does not exist")
    text = read_text_file(path, "component YAML")
    spec = spec_from_text(text, str(path))
    _LOADED_TEXT[str(path.resolve())] = text
    return spec, str(path)


def spec_from_text(text: str, source: str) -> dict[str, Any]:
    """A component graph from YAML text (e.g. the one a checkpoint embeds); ``source`` names it in errors."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise GraphError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise GraphError(f"{source}: must hold a mapping with 'components' and 'outputs'")
    return spec


# The text each YAML file had when this process built a graph from it: a checkpoint embeds the graph its
# weights were trained with, even if the file has been edited since.
_LOADED_TEXT: dict[str, str] = {}


def loaded_spec_text(path: str) -> str | None:
    """The YAML text ``load_spec`` last built a graph from for ``path``, or None if it never read it."""
    return _LOADED_TEXT.get(str(Path(path).resolve()))


def spec_parameters(spec: dict[str, Any], source: str) -> dict[str, Any]:
    """The graph's parameters with their defaults (``source`` names the graph in errors)."""
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise GraphError(f"{source}: 'parameters' must be a mapping of names to default values, got {parameters!r:.40}")
    return dict(parameters)


class ComponentPolicy(nn.Module):
    def __init__(self, env: EnvInfo, spec: dict[str, Any], source: str = "<spec>", **kwargs: Any):
        super().__init__()
        self.source = source
        where = source
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise GraphError(f"{where}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(SPEC_KEYS))}")
        parameters = spec_parameters(spec, where)
        for key in kwargs:
            if key not in parameters:
                raise GraphError(f"{where}: unknown parameter '{key}'; allowed: {', '.join(sorted(parameters))}")
        parameters.update(kwargs)
        entries = spec.get("components")
        if not isinstance(entries, list) or not entries:
            raise GraphError(f"{where}: 'components' must be a non-empty list")
        ordered = _topological_order([_check_entry(entry, index, where) for index, entry in enumerate(entries)], where)
        outputs = spec.get("outputs") or {}
        if not isinstance(outputs, dict) or set(outputs) != {"logits", "value"}:
            raise GraphError(f"{where}: 'outputs' must name the 'logits' and 'value' components")

        self.components = nn.ModuleDict()
        self.clip_scales: dict[str, float] = {}
        cores = [entry["name"] for entry in ordered if entry["type"] == "lstm"]
        if len(cores) != 1:
            raise GraphError(f"{where}: needs exactly one lstm component (it carries each agent's memory), "
                             f"found {len(cores)}")
        self.core_name = cores[0]
        probe = _probe_tokens(env)
        context = SegmentContext(None, torch.ones(len(probe), 1, dtype=torch.bool))
        values: dict[str, Any] = {keys.ENV_OBS: probe}
        total, available = 0, available_memory()
        for entry in ordered:
            name = entry["name"]
            params = {key: _resolve(value, parameters, name, where) for key, value in entry["params"].items()}
            builder, _ = COMPONENT_TYPES[entry["type"]]
            try:
                inputs = [_lookup(values, source) for source in entry["sources"]]
                total += meta_parameter_count(lambda: builder(inputs, env, **params))
                check_parameter_budget(total, f"{where} (up to component '{name}')",
                                       f"lower the size parameters ({', '.join(sorted(parameters)) or 'params'})",
                                       available)
                component = builder(inputs, env, **params)
                output = component(inputs, context)
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
                shapes = ", ".join(_describe(values, s) for s in entry["sources"])
                raise GraphError(f"{where}: component '{name}' ({entry['type']}) cannot take its inputs "
                                 f"[{shapes}]: {first_line(error)}") from None
            self.components[name] = component
            self.clip_scales[name] = float(entry.get("clip_scale", 1.0))
            values[name] = output
        for role, target in outputs.items():
            if not isinstance(target, str) or target not in self.components:
                raise GraphError(f"{where}: output '{role}' names unknown component '{target}'")
        self.logits_name, self.value_name = outputs["logits"], outputs["value"]
        logits, value = _main(values[self.logits_name]), _main(values[self.value_name])
        if logits.dim() != 2:
            raise GraphError(f"{where}: output 'logits' ('{self.logits_name}') must give one row of action scores per "
                             f"agent, [agents, actions]; it gives {list(logits.shape)} for 2 agents")
        if value.shape != (len(probe),):
            raise GraphError(f"{where}: output 'value' ('{self.value_name}') must give one number per agent, [agents]; "
                             f"it gives {list(value.shape)} for 2 agents")
        if not isinstance(self.components[self.logits_name].block, Actor):
            raise GraphError(f"{where}: output 'logits' must be an actor component (its action embeddings follow "
                             f"action names), got '{self.logits_name}'")
        self._steps = _execution_steps(ordered, set(outputs.values()))

    @property
    def core(self) -> RecurrentCore:
        return self.components[self.core_name].block

    @property
    def actor(self) -> Actor:
        return self.components[self.logits_name].block

    def clipped_layers(self) -> dict[str, tuple[nn.Module, float]]:
        layers: dict[str, tuple[nn.Module, float]] = {}
        for name, component in self.components.items():
            for suffix, module in component.clipped.items():
                layers[suffix or name] = (module, self.clip_scales[name])
        return layers

    def forward(self, tokens: torch.Tensor, state: LSTMState,
                starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        """As ``RecurrentPolicy.forward``: rows ``[B*TT]``, the state entering each segment, ``starts [B, TT]``."""
        context = SegmentContext(state, starts)
        values: dict[str, Any] = {keys.ENV_OBS: tokens}
        for name, sources, fused in self._steps:
            inputs = [_lookup(values, source) for source in sources]
            if fused is None:
                values[name] = self.components[name](inputs, context)
            else:  # a token convolution: fused = (token_to_box, obs_normalizer) it stands for
                box, normalizer = (self.components[part] for part in fused)
                values[name] = run_token_conv(box, normalizer, self.components[name], inputs[0])
        return _main(values[self.logits_name]), _main(values[self.value_name]), context.final_state


def _execution_steps(ordered: list[dict[str, Any]], outputs: set[str]) -> list[tuple[str, list[str], Any]]:
    """``(name, sources, fused)`` per component to run, in order. A chain token_to_box -> obs_normalizer ->
    conv2d whose first two outputs nothing else reads runs as one token convolution (docs/design.md, "Token
    convolution"): the conv2d step reads the tokens and ``fused`` names the two components it stands for;
    they are not run (their modules stay, with their state)."""
    by_name = {entry["name"]: entry for entry in ordered}
    readers = Counter(source.partition(".")[0] for entry in ordered for source in entry["sources"])

    def only_feeds(name: str, kind: str) -> bool:
        entry = by_name.get(name)
        return entry is not None and entry["type"] == kind and readers.get(name) == 1 and name not in outputs

    steps, skipped = [], set()
    for entry in ordered:
        name, sources, fused = entry["name"], list(entry["sources"]), None
        if entry["type"] == "conv2d" and only_feeds(sources[0], "obs_normalizer"):
            box = by_name[sources[0]]["sources"][0]
            if only_feeds(box, "token_to_box"):
                fused = (box, sources[0])
                sources = list(by_name[box]["sources"])
                skipped.update(fused)
        steps.append((name, sources, fused))
    return [step for step in steps if step[0] not in skipped]


def _check_entry(entry: Any, index: int, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or "name" not in entry:
        raise GraphError(f"{where}: component #{index + 1} must be a mapping with a 'name'")
    name = str(entry["name"])
    unknown = set(entry) - COMPONENT_KEYS
    if unknown:
        raise GraphError(f"{where}: component '{name}' has unknown key '{sorted(unknown)[0]}'; "
                         f"allowed: {', '.join(sorted(COMPONENT_KEYS))}")
    type_name = entry.get("type")
    if type_name not in COMPONENT_TYPES:
        raise GraphError(f"{where}: component '{name}' has unknown type '{type_name}'; "
                         f"known types: {', '.join(sorted(COMPONENT_TYPES))}")
    sources = entry.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise GraphError(f"{where}: component '{name}' needs 'sources' as a list of names")
    expected = COMPONENT_TYPES[type_name][1]
    if len(sources) != expected:
        raise GraphError(f"{where}: component '{name}' ({type_name}) takes {expected} source(s), got {len(sources)}")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise GraphError(f"{where}: component '{name}' needs 'params' as a mapping")
    allowed = type_parameters(type_name)
    for key in params:
        if key not in allowed:
            raise GraphError(f"{where}: component '{name}' ({type_name}) has unknown parameter '{key}'; "
                             f"allowed: {', '.join(allowed) or 'none'}")
    for key in required_parameters(type_name):
        if key not in params:
            raise GraphError(f"{where}: component '{name}' ({type_name}) needs parameter '{key}'")
    clip_scale = entry.get("clip_scale", 1.0)
    if not isinstance(clip_scale, (int, float)) or clip_scale < 0:
        raise GraphError(f"{where}: component '{name}' needs a non-negative number as clip_scale")
    return {**entry, "name": name, "sources": sources, "params": params}


def _topological_order(entries: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Order components so each comes after its sources (stable: YAML order where free)."""
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry["name"] in by_name or entry["name"] in GRAPH_INPUTS:
            raise GraphError(f"{where}: component name '{entry['name']}' is used twice")
        by_name[entry["name"]] = entry
    for entry in entries:
        for source in entry["sources"]:
            base = source.split(".", 1)[0]
            if base not in by_name and base not in GRAPH_INPUTS:
                raise GraphError(f"{where}: component '{entry['name']}' has missing source '{source}'")
    # Depth-first, sources before their consumer, with an explicit stack: a long chain of components must not
    # reach Python's recursion limit.
    ordered: list[dict[str, Any]] = []
    done: set[str] = set(GRAPH_INPUTS)
    for entry in entries:
        if entry["name"] in done:
            continue
        stack = [(entry["name"], iter(entry["sources"]))]
        visiting = {entry["name"]}
        while stack:
            name, pending = stack[-1]
            source = next(pending, None)
            if source is None:
                stack.pop()
                visiting.discard(name)
                done.add(name)
                ordered.append(by_name[name])
                continue
            base = source.split(".", 1)[0]
            if base in done:
                continue
            if base in visiting:
                path = [name for name, _ in stack]
                cycle = " -> ".join(path[path.index(base):] + [base])
                raise GraphError(f"{where}: component '{base}' is in a cycle: {cycle}")
            visiting.add(base)
            stack.append((base, iter(by_name[base]["sources"])))
    return ordered


def _resolve(value: Any, parameters: dict[str, Any], name: str, where: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        key = value[1:]
        if key not in parameters:
            raise GraphError(f"{where}: component '{name}' refers to unknown parameter '{value}'")
        return parameters[key]
    return value


def _lookup(values: dict[str, Any], source: str) -> Any:
    base, _, field = source.partition(".")
    value = values[base]
    if isinstance(value, dict):
        return value[field] if field else _main(value)
    if field:
        raise KeyError(f"'{base}' has no output field '{field}'")
    return value


def _describe(values: dict[str, Any], source: str) -> str:
    try:
        return f"{source} {list(_lookup(values, source).shape)}"
    except (KeyError, AttributeError):
        return f"{source} (no such output)"


def _main(value: Any) -> torch.Tensor:
    return next(iter(value.values())) if isinstance(value, dict) else value


def _probe_tokens(env: EnvInfo) -> torch.Tensor:
    """Two rows of padding-only tokens (plus one global token) to infer shapes; consumes no randomness."""
    tokens = torch.full((2, env.num_tokens, 3), 0xFF, dtype=torch.uint8)
    first = env.features[0].id if env.features else 0
    tokens[:, 0] = torch.tensor([0xFE, first, 1], dtype=torch.uint8)
    return tokens
