"""``Fast``: a small CNN encoder over the token box, the LSTM core and the shared heads
(docs/design.md, "Architectures")."""

import torch
from torch import nn

from metta_agent.blocks.init import conv2d, linear
from metta_agent.blocks.observation import ObsNormalizer, TokenToBox
from metta_agent.blocks.token_conv import token_conv
from metta_agent.env.info import EnvInfo
from metta_agent.errors import UsageError
from metta_agent.policies.pytorch.recurrent_policy import RecurrentPolicy


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class Fast(RecurrentPolicy):
    """token box -> normaliser -> Conv(F->64, k5, s3) -> Conv(64->64, k3) -> fc1 -> encoded_obs -> LSTM -> heads."""

    def __init__(self, env: EnvInfo, cnn_channels: int = 64, hidden_size: int = 128):
        super().__init__()
        features = env.num_features
        self.token_to_box = TokenToBox(features, env.obs_height, env.obs_width)
        self.obs_normalizer = ObsNormalizer(features, env.normalizations)
        self.cnn1 = conv2d(features, cnn_channels, kernel_size=5, stride=3)
        self.cnn2 = conv2d(cnn_channels, cnn_channels, kernel_size=3)
        height = conv_output_size(conv_output_size(env.obs_height, 5, 3), 3, 1)
        width = conv_output_size(conv_output_size(env.obs_width, 5, 3), 3, 1)
        if height < 1 or width < 1:
            raise UsageError(f"fast's convolutions (5x5 stride 3, then 3x3) need an observation window of at least "
                             f"11x11; the game's is {env.obs_height}x{env.obs_width}")
        self.fc1 = linear(cnn_channels * height * width, hidden_size)
        self.encoded_obs = linear(hidden_size, hidden_size)
        self.attach_core_and_heads(hidden_size)

    def encoder_clipped_layers(self) -> dict[str, nn.Module]:
        return {"cnn1": self.cnn1, "cnn2": self.cnn2, "fc1": self.fc1, "encoded_obs": self.encoded_obs}

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        # cnn1(obs_normalizer(token_to_box(tokens))), computed from the tokens (blocks/token_conv.py)
        x = torch.relu(token_conv(tokens, self.token_to_box, self.obs_normalizer, self.cnn1))
        x = torch.relu(self.cnn2(x)).flatten(1)
        x = torch.relu(self.fc1(x))
        return torch.relu(self.encoded_obs(x))
