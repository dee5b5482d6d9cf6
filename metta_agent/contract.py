"""The TensorDict keys that travel between trainer and agent, each written down once (docs/design.md,
"Policy contract").

Rollout batches are ``[N]`` (one row per agent); training batches are ``[B, TT]`` segments, which the agent
hands to its policy flattened row-major (``index = b * TT + t``).
"""

# Inputs the trainer writes.
ENV_OBS = "env_obs"  # uint8 [.., M, 3] tokens: (location, feature id, value)
STARTS = "starts"  # bool: this observation is the first of an episode (the step before ended or was cut off)
AGENT_ROWS = "agent_rows"  # long [N], rollout only: which agent each row is (keys its memory); default 0..N-1
ACTIONS = "actions"  # long: sampled in rollout, read in training

# Outputs the agent writes.
ACT_LOG_PROB = "act_log_prob"
VALUES = "values"
FULL_LOG_PROBS = "full_log_probs"  # [.., A]
ENTROPY = "entropy"
# The memory entering the step, [.., num_layers, hidden]: written in rollout (before the reset a start
# causes), read in training at each segment's step 0.
LSTM_H = "lstm_h"
LSTM_C = "lstm_c"

# Trainer-only keys stored in the experience buffer.
REWARDS = "rewards"
ADVANTAGES = "advantages"
RETURNS = "returns"
