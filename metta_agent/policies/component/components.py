"""The registry of component types a YAML graph may name. Each wraps a shared building block; a YAML file
can only choose among these (it cannot import or run code).

A component type is a function ``build(inputs, env, **params) -> ComponentModule``: ``inputs`` are example
tensors from its sources (for shape inference), ``params`` come from the YAML.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from metta_agent.blocks.attention import FourierAttributeEmbedding, LatentCrossAttention, LatentSelfAttention
from metta_agent.blocks.heads import Actor, Critic
from metta_agent.blocks.init import conv2d, linear
from metta_agent.blocks.observation import ObsNormalizer, TokenPadStrip, TokenToBox, ValueNormalizer
from metta_agent.blocks.recurrent import LSTMState, RecurrentCore
from metta_agent.blocks.token_conv import token_conv
from metta_agent.env.info import EnvInfo

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
}


class SegmentContext:
    """What one forward of a graph gives every component besides its inputs: the recurrent state entering the
    segments (None: zeros) and the episode starts ``[B, TT]``. The lstm component leaves its final state here."""

    def __init__(self, state: LSTMState | None, starts: torch.Tensor):
        self.state, self.starts = state, starts
        self.final_state: LSTMState | None = None


class Component(nn.Module):
    """A graph node: calls its block on its sources' outputs. ``clipped`` names the layers weight
    clipping covers (with the component's ``clip_scale``)."""

    def __init__(self, block: nn.Module, call: Callable, clipped: dict[str, nn.Module] | None = None,
                 activation: str | None = None):
        super().__init__()
        self.block = block
        self._call = call
        self.clipped = clipped or {}
        self.activation = activation  # of a layer component, for calls that run the layer another way

    def forward(self, inputs: list, context: SegmentContext):
        return self._call(self.block, inputs, context)


def _activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def token_to_box(inputs, env: EnvInfo) -> Component:
    return Component(TokenToBox(env.num_features, env.obs_height, env.obs_width), lambda b, x, context: b(x[0]))


def obs_normalizer(inputs, env: EnvInfo) -> Component:
    return Component(ObsNormalizer(inputs[0].shape[1], env.normalizations), lambda b, x, context: b(x[0]))


def conv2d_layer(inputs, env: EnvInfo, out_channels: int, kernel_size: int, stride: int = 1,
                 activation: str = "relu", gain: float = 1.0) -> Component:
    act = _activation(activation)
    layer = conv2d(inputs[0].shape[1], out_channels, kernel_size, stride, gain)
    return Component(layer, lambda b, x, context: act(b(x[0])), {"": layer}, activation)


def run_token_conv(box: Component, normalizer: Component, conv: Component, tokens: torch.Tensor) -> torch.Tensor:
    """The chain token_to_box -> obs_normalizer -> conv2d as one token convolution (``blocks/token_conv.py``)."""
    return ACTIVATIONS[conv.activation](token_conv(tokens, box.block, normalizer.block, conv.block))


def flatten(inputs, env: EnvInfo) -> Component:
    return Component(nn.Flatten(), lambda b, x, context: b(x[0]))


def linear_layer(inputs, env: EnvInfo, out_features: int, activation: str = "relu", gain: float = 1.0) -> Component:
    act = _activation(activation)
    layer = linear(inputs[0].shape[-1], out_features, gain)
    return Component(layer, lambda b, x, context: act(b(x[0])), {"": layer})


def lstm(inputs, env: EnvInfo, hidden_size: int = 128, num_layers: int = 2) -> Component:
    return Component(RecurrentCore(inputs[0].shape[-1], hidden_size, num_layers), _run_core)


def _run_core(core: RecurrentCore, inputs: list, context: SegmentContext) -> torch.Tensor:
    """The core over the graph's rows viewed as segments ``[B, TT]``; its final state goes to the context."""
    batch, bptt = context.starts.shape
    state = context.state
    if state is None:
        zeros = inputs[0].new_zeros(core.num_layers, batch, core.hidden_size)
        state = (zeros, zeros)
    out, context.final_state = core(inputs[0].view(batch, bptt, -1), state, context.starts)
    return out.reshape(batch * bptt, -1)


def critic(inputs, env: EnvInfo, hidden_size: int = 1024) -> Component:
    block = Critic(inputs[0].shape[-1], hidden_size)
    return Component(block, lambda b, x, context: b(x[0]), block.clipped_layers())


def actor(inputs, env: EnvInfo, hidden_size: int = 512, embedding_dim: int = 16) -> Component:
    block = Actor(inputs[0].shape[-1], hidden_size, embedding_dim)
    block.action_embeddings.set_action_rows(list(range(1, len(env.action_names) + 1)))  # MettaAgent sets the real map
    return Component(block, lambda b, x, context: b(x[0]), block.clipped_layers())


def token_pad_strip(inputs, env: EnvInfo) -> Component:
    """Outputs ``tokens`` (main) and ``padding``."""
    return Component(TokenPadStrip(), lambda b, x, context: dict(zip(("tokens", "padding"), b(x[0]))))


def value_normalizer(inputs, env: EnvInfo) -> Component:
    return Component(ValueNormalizer(env.normalizations), lambda b, x, context: b(x[0]))


def fourier_embedding(inputs, env: EnvInfo, embed_dim: int, num_frequencies: int) -> Component:
    block = FourierAttributeEmbedding(embed_dim, num_frequencies, env.obs_height, env.obs_width)
    return Component(block, lambda b, x, context: b(x[0], x[1]))


def cross_attention(inputs, env: EnvInfo, output_dim: int, num_queries: int, query_dim: int, heads: int,
                    layers: int, use_mask: bool = True, use_cls: bool = False) -> Component:
    block = LatentCrossAttention(inputs[0].shape[-1], output_dim, num_queries, query_dim, heads, layers, use_mask,
                                 use_cls)
    return Component(block, lambda b, x, context: b(x[0], x[1]))


def self_attention(inputs, env: EnvInfo, output_dim: int, heads: int, layers: int, use_cls: bool = True) -> Component:
    block = LatentSelfAttention(inputs[0].shape[-1], output_dim, heads, layers, use_cls)
    return Component(block, lambda b, x, context: b(x[0]))


# type name -> (builder, number of sources)
COMPONENT_TYPES: dict[str, tuple[Callable[..., Component], int]] = {
    "token_to_box": (token_to_box, 1),
    "obs_normalizer": (obs_normalizer, 1),
    "conv2d": (conv2d_layer, 1),
    "flatten": (flatten, 1),
    "linear": (linear_layer, 1),
    "lstm": (lstm, 1),
    "critic": (critic, 1),
    "actor": (actor, 1),
    "token_pad_strip": (token_pad_strip, 1),
    "value_normalizer": (value_normalizer, 1),
    "fourier_embedding": (fourier_embedding, 2),
    "cross_attention": (cross_attention, 2),
    "self_attention": (self_attention, 1),
}


def type_parameters(type_name: str) -> list[str]:
    builder, _ = COMPONENT_TYPES[type_name]
    return [name for name in inspect.signature(builder).parameters if name not in ("inputs", "env")]


def required_parameters(type_name: str) -> list[str]:
    builder, _ = COMPONENT_TYPES[type_name]
    return [
        name for name, parameter in inspect.signature(builder).parameters.items()
        if name not in ("inputs", "env") and parameter.default is inspect.Parameter.empty
    ]
