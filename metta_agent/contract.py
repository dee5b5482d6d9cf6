"""The TensorDict keys that travel between trainer and policy, each written down once (docs/design.md,
"Policy contract").

Rollout batches are ``[N]`` (one row per agent); training batches are ``[B, TT]`` segments that the
policy flattens row-major (``index = b * TT + t``).
"""

# Inputs the trainer writes.
ENV_OBS = "env_obs"  # uint8 [.., M, 3] tokens: (location, feature id, value)
DONES = "dones"  # flags of the step that produced this observation: set = first obs of a new episode
TRUNCATEDS = "truncateds"
TRAINING_ENV_IDS = "training_env_ids"  # long [N]: global agent row, keys the per-agent recurrent state
ACTIONS = "actions"  # long: sampled in rollout, read in training

# Outputs the policy writes.
ACT_LOG_PROB = "act_log_prob"
VALUES = "values"
FULL_LOG_PROBS = "full_log_probs"  # [.., A]
ENTROPY = "entropy"
LSTM_H = "lstm_h"  # [.., num_layers, hidden]: the state the step started from (after any reset)
LSTM_C = "lstm_c"
BPTT = "bptt"  # long: TT of the batch (1 in rollout)
BATCH = "batch"  # long: B of the batch (N in rollout)

# Trainer-only keys stored in the experience buffer.
REWARDS = "rewards"
ADVANTAGES = "advantages"
RETURNS = "returns"
