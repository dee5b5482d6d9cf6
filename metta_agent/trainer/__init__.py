"""PPO training: experience buffer of BPTT segments, advantages, the update, and the main loop."""
