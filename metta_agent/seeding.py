"""Every seeding rule of a run, in one place (docs/design.md, "Seeds").

From the run's ``trainer.seed`` (``s``):

- **Weights**: ``torch.manual_seed(s)`` before the agent is built, on every rank, so all ranks start from the
  same weights (and the same clip bounds and L2-init anchors); ``numpy``'s global stream is seeded with
  ``s`` too.
- **Actions**: after the build, rank ``r`` of several reseeds torch with ``rank_seed(s, r)``, so the ranks
  sample different actions. **Minibatch order**: its own generator, seeded ``rank_seed(s, r)``.
- **Maps and engines**: episode ``k`` of env ``e`` (a global env index: rank ``r`` plays envs from
  ``r x num_envs``) uses ``episode_seed(env_seed, e, k)`` for the map builder and the C++ engine;
  ``env_seed(s, epoch)`` is ``s`` for a new run; after a resume it draws new maps.
  The cut-off of env ``e``'s first episode (staggered episode ends) comes from ``(env_seed, e)``. In a game
  mixture, the game episode ``k`` of env ``e`` plays is drawn by weight from ``(env_seed, e, k)`` too.
- **Evaluation**: envs numbered from ``EVAL_ENV_INDEX_BASE``, which no training run reaches, so evaluation
  maps are never training maps; the agent samples from its own generator seeded with the eval seed.
- **Resume**: the checkpoint restores torch's, numpy's and the minibatch generator's states; under DDP each
  rank then reseeds torch and its minibatch generator with ``resumed_rank_seed(s, r, epoch)``.
"""

from __future__ import annotations

import numpy as np

EVAL_ENV_INDEX_BASE = 1 << 40  # first env index of evaluation maps
_STAGGER_KEY = 0x57A6  # distinguishes the stagger draw from the episode seeds of the same env
_RESUME_KEY = 0x2E5E
_GAME_KEY = 0x6A3E  # distinguishes a mixture's game draw from the episode's map seed


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """Seed of episode ``episode`` of env ``env_index`` in a run seeded with ``seed`` (0 <= result < 2**31)."""
    state = np.random.SeedSequence([int(seed), int(env_index), int(episode)]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def first_episode_cutoff(seed: int, env_index: int, max_steps: int) -> int:
    """Step in ``[1, max_steps]`` at which env ``env_index``'s first episode is cut (0: never, if no limit)."""
    if max_steps <= 0:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(env_index), _STAGGER_KEY]))
    return int(rng.integers(1, max_steps + 1))


def episode_game_draw(seed: int, env_index: int, episode: int, weights) -> int:
    """Index of the game (drawn by ``weights``) that episode ``episode`` of env ``env_index`` plays."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(env_index), int(episode), _GAME_KEY]))
    p = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s seed for its action sampling and minibatch order."""
    return int(seed) + int(rank)


def env_seed(seed: int, epoch: int) -> int:
    """The environments' seed: the run seed for a fresh run; a run resumed at ``epoch`` draws new maps."""
    if epoch == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(epoch), _RESUME_KEY]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def resumed_rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A rank's fresh streams after a resume (the checkpoint holds rank 0's only)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])
