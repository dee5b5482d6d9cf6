"""``Fast``: a small CNN encoder over the token box, the LSTM core and the shared heads
(docs/design.md, "Architectures")."""

import torch
from tensordict import TensorDict
from torch import nn

from metta_agent import contract as keys
from metta_agent.blocks.heads import Actor, Critic
from metta_agent.blocks.init import conv2d, linear
from metta_agent.blocks.observation import ObsNormalizer, TokenToBox
from metta_agent.blocks.recurrent import RecurrentCore
from metta_agent.env.info import EnvInfo


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class Fast(nn.Module):
    """token box -> normaliser -> Conv(F->64, k5, s3) -> Conv(64->64, k3) -> fc1 -> encoded_obs -> LSTM -> heads."""

    def __init__(self, env: EnvInfo, cnn_channels: int = 64, hidden_size: int = 128):
        super().__init__()
        features = env.num_features
        self.token_to_box = TokenToBox(features, env.obs_height, env.obs_width)
        self.obs_normalizer = ObsNormalizer(features)
        self.cnn1 = conv2d(features, cnn_channels, kernel_size=5, stride=3)
        self.cnn2 = conv2d(cnn_channels, cnn_channels, kernel_size=3)
        height = conv_output_size(conv_output_size(env.obs_height, 5, 3), 3, 1)
        width = conv_output_size(conv_output_size(env.obs_width, 5, 3), 3, 1)
        self.fc1 = linear(cnn_channels * height * width, hidden_size)
        self.encoded_obs = linear(hidden_size, hidden_size)
        self.core = RecurrentCore(hidden_size, hidden_size, num_layers=2)
        self.critic = Critic(hidden_size, 1024)
        self.actor = Actor(hidden_size, 512, 16)

    def clipped_layers(self) -> dict[str, tuple[nn.Module, float]]:
        modules = {"cnn1": self.cnn1, "cnn2": self.cnn2, "fc1": self.fc1, "encoded_obs": self.encoded_obs}
        modules.update(self.critic.clipped_layers())
        modules.update(self.actor.clipped_layers())
        return {name: (module, 1.0) for name, module in modules.items()}

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        box = self.obs_normalizer(self.token_to_box(tokens))
        x = torch.relu(self.cnn1(box))
        x = torch.relu(self.cnn2(x)).flatten(1)
        x = torch.relu(self.fc1(x))
        return torch.relu(self.encoded_obs(x))

    def forward(self, td: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.core(self.encode(td[keys.ENV_OBS]), td)
        return self.actor(hidden), self.critic(hidden)
