"""A hand-written (non-learning) baseline policy for metta-agent's games.

It is the bar trained agents are measured against, so it tries to play well, but it sees only what an agent
sees, the observation tokens, plus static facts read from the game config.

What it observes
----------------
Each step, per agent, the 200 tokens ``(location, feature, value)`` of its egocentric 11x11 window. Only a
disc of radius ~5 around the agent is reported, nearest cells first, so a full token list has cut off the
farthest cells (those cells count as unseen).

* ``tag`` tokens give the type of each visible object (the value indexes the config's sorted tag names,
  ``type:<object name>``);
* ``inv:<resource>`` tokens give a station's stock on its cell, another agent's inventory on its cell, and
  the agent's own inventory on the centre cell (where ``agent_id`` is its own id).

The games emit no ``lp:*`` tokens (offset from spawn: ``local_position`` is off), so each agent keeps its
position by dead reckoning. After a move it compares the walls and stations in view with those of the
previous view, shifted by the move and unshifted, and believes whichever matches better. When nothing static
is in view it assumes the move worked if the cell it stepped into looked free.

What it reads from the config
-----------------------------
Which object types are stations (objects with an ``on_use_handler`` that hands out one resource), what a
station needs the user to hold (``actorHas`` filters), what it takes from the user (``updateActor``) and what
it gives (``withdraw``: its stock), how much stock it holds and when it is restocked (the events that add to
its stock), the agent's inventory limits, which resources are rewarded, and the size of the game's maps and
how many stations of each type they hold (from one throwaway map: the builder fixes the counts, not the
layout). There are no special cases per game.

Strategy
--------
Every agent remembers, in spawn-relative coordinates, the cells it has seen (free, obstacle, station) and a
table of the stations it has seen, each with its last observed stock and when that was. The restock schedule
turns this into a predicted stock at any later step. What other agents take while the station is out of
sight is unknown: the next sighting corrects the prediction.

Each step the agent scores every remembered station that its inventory lets it use by the gain per step spent
on it, ``gain * units / (steps to walk there + steps to collect)``. ``gain`` is the rise in "chain value":
an end product (a rewarded resource no station consumes: hearts) is worth 1, and a resource a station turns
into something is worth ``CHAIN_DISCOUNT`` times that (a battery 0.3, an ore 0.09). A station predicted
empty on arrival is scored by the wait for its next restock.

Other agents are accounted for. A visible agent that can use a station, is heading for it (it is the
nearest one it can use) and is closer to it takes the stock first, so the station counts as occupied for
``CONTENTION_PERIODS`` restock periods. At equal distance a newcomer yields to an agent that has been
standing there. An agent seen parked next to a station is remembered for a while once out of view. This
spreads agents over the stations instead of queueing them at one. Agents also carry at most
``HOARD_LIMIT`` units of an intermediate resource, so they convert instead of hoarding.

The outcome depends on how fast stations restock. An agent parks next to a station that restocks every few
steps and bumps it every step (the heart game's altars). It roams between remembered stations that fill up
slowly (the arena's mines), going back to them when they should have restocked. While some station of a
usable kind is still undiscovered and nothing scores above what such a station ``EXPLORE_STEPS`` away
would, the agent walks to the nearest frontier of its map (an unknown cell next to one it can reach).

Moves come from a shortest-path search in a window around the agent over its remembered map. Visible
agents are costly cells rather than walls; a goal outside the window is reached through the window's border
cell with the best straight-line estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mettagrid.config.mettagrid_config import MettaGridConfig

from metta_agent.env.info import EnvInfo

__all__ = ["ScriptedPolicy"]

# Cell codes of the per-agent map and of a decoded observation window.
UNKNOWN = -1
FREE = 0
OBSTACLE = 1
AGENT = 2  # only in a decoded window: the remembered map stores agents' cells as FREE
STATION0 = 3  # station kind k has code STATION0 + k
_NO_TYPE = -128  # a tag that says nothing about an object's type

# Observation location bytes that are not cells.
GLOBAL_LOCATION = 0xFE
EMPTY_TOKEN = 0xFF

# A resource is worth this much of what the best station turns it into (an end product is worth 1): the
# last steps of the chain (altar, generator) are preferred over starting new units (mining).
CHAIN_DISCOUNT = 0.3
# Most units of an intermediate resource (one a station consumes) an agent collects before converting:
# hoarding more only delays the conversions.
HOARD_LIMIT = 10
# Exploring is scored like a station of the best usable kind this many steps away, while at least
# EXPLORE_UNDISCOVERED stations of that kind are still undiscovered (less when fewer are).
EXPLORE_STEPS = 8.0
EXPLORE_UNDISCOVERED = 1.0
# The station chosen last step, or exploring if that was the choice, gets this factor on its score, so that
# near-ties do not make agents dither.
STICKINESS = 1.15
# A closer agent that can use a station is assumed to occupy it for this many restock periods.
CONTENTION_PERIODS = 10.0
# An agent seen next to a station (and able to use it) is assumed to stay there this many steps once out of
# view; an agent that found its way to a station blocked by others also gives it up for that long.
PARKED_MEMORY = 30
# Steps an agent must have stood next to its station before it stops yielding it to agents arriving there.
INCUMBENT_STEPS = 2
# Half-width of the path-search window (a (2R+1)^2 square around the agent) and the number of relaxation
# sweeps (enough for detours of about the window's size).
PLAN_RADIUS = 6
PLAN_SWEEPS = 12
# Extra path cost of stepping onto a cell seen holding an agent: it may well have moved on by then, but a
# way around it is better if it is not much longer. The cost is the same at any distance: one that changed
# as we approached would make the chosen path flip back and forth.
AGENT_COST = 4.0
# After this many steps of trying to walk into an agent, take a random step to break the deadlock.
STUCK_STEPS = 3
# An agent whose map has no frontier left looks again only after this many steps.
FRONTIER_RETRY_STEPS = 20
_INF = np.float32(1e6)


@dataclass
class _StationKind:
    """What the game config says about one type of station."""

    name: str
    needs: dict[int, int]  # resource index -> amount the user must hold
    consumes: dict[int, int]  # resource index -> amount taken from the user per use
    gives: int  # resource index handed out per use (the station's stock)
    gives_amount: int
    capacity: int  # most stock it holds
    # restocked[t] = stock units added by restock events at timesteps <= t, for t in [0, max_steps].
    restocked: np.ndarray = field(repr=False)
    # next_restock[t] = first timestep after t with a restock (max_steps + 1 when none is left).
    next_restock: np.ndarray = field(repr=False)
    period: float  # mean steps between restocks (inf when never restocked)


class _GameFacts:
    """Feature ids, tag meanings, actions, stations and resource values of a game, read from its config."""

    def __init__(self, game: MettaGridConfig):
        env = EnvInfo.from_game(game)
        g = game.game
        self.feature = {f.name: f.id for f in env.features}
        self.window = env.obs_height
        self.centre = self.window // 2
        self.max_steps = int(g.max_steps)
        self.resources = list(g.resource_names)
        resource_index = {name: i for i, name in enumerate(self.resources)}

        actions = list(env.action_names)
        self.num_actions = len(actions)
        self.noop = actions.index("noop")
        # (action, (row step, column step)) of each move; rows grow southwards.
        self.moves = [
            (actions.index("move_north"), (-1, 0)),
            (actions.index("move_south"), (1, 0)),
            (actions.index("move_west"), (0, -1)),
            (actions.index("move_east"), (0, 1)),
        ]

        self.kinds: list[_StationKind] = []
        for name, obj in g.objects.items():
            handler = getattr(obj, "on_use_handler", None)
            kind = self._station_kind(name, obj, handler, g, resource_index) if handler is not None else None
            if kind is not None:
                self.kinds.append(kind)
        station_code = {kind.name: STATION0 + k for k, kind in enumerate(self.kinds)}

        # Tag value -> cell code. Anything that is neither a station we understand nor an agent just blocks
        # the way (walls).
        self.tag_code = np.full(256, _NO_TYPE, dtype=np.int16)
        agent_type = getattr(g.agent, "name", "agent")
        for value, tag in enumerate(g.id_map().tag_names()):
            if not tag.startswith("type:"):
                continue
            type_name = tag[len("type:"):]
            if type_name in station_code:
                self.tag_code[value] = station_code[type_name]
            elif type_name == agent_type:
                self.tag_code[value] = AGENT
            else:
                self.tag_code[value] = OBSTACLE

        # Inventory features: (feature id, resource index, multiplier) for inv:<r>, inv:<r>:p1, ...
        base = int(g.obs.token_value_base)
        self.inventory_features: list[tuple[int, int, int]] = []
        for r, name in enumerate(self.resources):
            if f"inv:{name}" in self.feature:
                self.inventory_features.append((self.feature[f"inv:{name}"], r, 1))
            p = 1
            while f"inv:{name}:p{p}" in self.feature:
                self.inventory_features.append((self.feature[f"inv:{name}:p{p}"], r, base**p))
                p += 1

        # The agent's inventory limits: what it can still take from a station.
        inventory = g.agent.inventory
        self.inventory_limit = np.full(len(self.resources), int(inventory.default_limit), dtype=np.int64)
        for limit in inventory.limits.values():
            for res in limit.resources:
                if res in resource_index:
                    self.inventory_limit[resource_index[res]] = int(limit.base)

        # Resources some station consumes: stepping stones towards the end products.
        self.intermediates = {r for k in self.kinds for r in k.consumes}
        value = self._resource_values(g, resource_index)
        self.gain = np.array(
            [value[k.gives] * k.gives_amount - sum(value[r] * a for r, a in k.consumes.items()) for k in self.kinds],
            dtype=np.float32,
        )
        self.stock_resource = np.array([k.gives for k in self.kinds], dtype=np.int64)

    def _station_kind(self, name, obj, handler, g, resource_index) -> _StationKind | None:
        """Read one station type from its use handler, inventory and restock events (None: not a station
        this policy understands, treated as an obstacle)."""
        spec = handler.model_dump()
        needs: dict[int, int] = {}
        for flt in spec.get("filters", []):
            if flt.get("filter_type") == "resource" and flt.get("target") == "actor":
                for res, amount in flt["resources"].items():
                    needs[resource_index[res]] = max(needs.get(resource_index[res], 0), int(amount))
        consumes: dict[int, int] = {}
        gives: dict[int, int] = {}
        for mut in spec.get("mutations", []):
            kind = mut.get("mutation_type")
            if kind == "resource_delta" and mut.get("target") == "actor":
                for res, delta in mut["deltas"].items():
                    if delta < 0:
                        consumes[resource_index[res]] = -int(delta)
                        needs[resource_index[res]] = max(needs.get(resource_index[res], 0), -int(delta))
            elif kind == "resource_transfer" and mut.get("from_target") == "target" and mut.get("to_target") == "actor":
                for res, amount in mut["resources"].items():
                    gives[resource_index[res]] = int(amount)
        if len(gives) != 1:
            return None
        ((give, give_amount),) = gives.items()
        give_name = self.resources[give]
        capacity = int(obj.inventory.default_limit)
        for limit in obj.inventory.limits.values():
            if give_name in limit.resources:
                capacity = int(limit.base)
        # Restocks: events targeting this object type that add to its stock, at their listed timesteps.
        added_at = np.zeros(self.max_steps + 1, dtype=np.int64)
        for event in g.events.values():
            ev = event.model_dump()
            if ev.get("target_query", {}).get("source") != f"type:{name}":
                continue
            added = sum(
                int(m["deltas"].get(give_name, 0))
                for m in ev.get("mutations", [])
                if m.get("mutation_type") == "resource_delta" and m.get("target") == "target"
            )
            for t in ev.get("timesteps", []):
                if added > 0 and 0 <= int(t) <= self.max_steps:
                    added_at[int(t)] += added
        restocked = np.cumsum(added_at)
        next_restock = np.searchsorted(restocked, restocked + 1, side="left")
        period = (self.max_steps + 1) / restocked[-1] if restocked[-1] > 0 else float("inf")
        return _StationKind(name, needs, consumes, give, give_amount, capacity, restocked, next_restock, period)

    def _resource_values(self, g, resource_index) -> np.ndarray:
        """Chain value of each resource: end products (rewarded and consumed by no station; the arena's
        shaped rewards on ore and batteries only guide learners) are worth 1, a resource a station turns
        into something is worth CHAIN_DISCOUNT times that."""
        value = np.zeros(len(self.resources), dtype=np.float64)
        for res in g.agent.rewards:
            if res in resource_index and resource_index[res] not in self.intermediates:
                value[resource_index[res]] = 1.0
        if not value.any():
            value[:] = 1.0
        for _ in range(len(self.kinds)):  # enough passes for the longest chain
            for k in self.kinds:
                for r in k.consumes:
                    value[r] = max(value[r], CHAIN_DISCOUNT * value[k.gives])
        return value


def _map_census(game: MettaGridConfig) -> tuple[int, dict[str, int]]:
    """Largest side of the game's maps and how many objects of each type they hold.

    One throwaway map is built from the config; only its size and object counts are used (the map builder
    fixes both for every episode, not the layout)."""
    try:
        grid = game.game.map_builder.create().build_for_num_agents(game.game.num_agents).grid
    except Exception:  # a builder we cannot run offline: assume a generous map, counts unknown
        return 96, {}
    names, counts = np.unique(grid, return_counts=True)
    return int(max(grid.shape)), {str(n): int(c) for n, c in zip(names, counts)}


class ScriptedPolicy:
    """A memory-based greedy policy for MettaGrid station games (see the module docstring).

    ``act`` takes the observations of all agents of all envs (env-major) and returns their actions; each
    agent's memory is reset where ``starts`` says a new episode begins."""

    def __init__(self, game: MettaGridConfig, num_agents: int, seed: int = 0):
        self.facts = f = _GameFacts(game)
        self.num_agents = N = int(num_agents)
        self.rng = np.random.default_rng(seed)
        W = f.window
        extent, census = _map_census(game)
        # Spawn-relative map, big enough for any spawn point plus the view and planning windows around it.
        self.map_size = M = 2 * extent + W + 2 * PLAN_RADIUS
        self.origin = M // 2
        # Stations of each kind a map holds (0: unknown), to tell when exploring can still find some.
        self.kind_count = np.array([census.get(k.name, 0) for k in f.kinds], dtype=np.int64)

        # Observation window geometry: the reported disc and the Manhattan distance of each cell.
        rows, cols = np.mgrid[0:W, 0:W]
        self.disc = (rows - f.centre) ** 2 + (cols - f.centre) ** 2 <= f.centre**2 + 1
        self.cell_manhattan = np.abs(rows - f.centre) + np.abs(cols - f.centre)
        self.move_delta = np.zeros((f.num_actions, 2), dtype=np.int64)
        self.is_move = np.zeros(f.num_actions, dtype=bool)
        for action, (dr, dc) in f.moves:
            self.move_delta[action] = (dr, dc)
            self.is_move[action] = True
        self.move_actions = np.array([action for action, _ in f.moves])

        # Per-agent memory (see reset()).
        self.map = np.full((N, M, M), UNKNOWN, dtype=np.int8)
        self.station_id = np.full((N, M, M), -1, dtype=np.int16)  # index into the agent's station table
        self.pos = np.full((N, 2), self.origin, dtype=np.int64)
        self.seen_lo = self.pos - f.centre  # bounding box (inclusive) of the cells ever in view
        self.seen_hi = self.pos + f.centre
        self.t = np.zeros(N, dtype=np.int64)  # steps since the episode started
        self.last_action = np.full(N, f.noop, dtype=np.int64)
        self.prev_static = np.full((N, W, W), UNKNOWN, dtype=np.int8)  # walls/stations of the last view
        self.prev_target_free = np.zeros(N, dtype=bool)  # the cell the last move entered looked free
        self.prev_target_walkable = np.zeros(N, dtype=bool)  # ... looked free or held an agent
        self.stuck = np.zeros(N, dtype=np.int64)  # consecutive moves blocked by agents
        self.target = np.full(N, -1, dtype=np.int64)  # station chosen last step (-1: exploring)
        self.adjacent_steps = np.zeros(N, dtype=np.int64)  # consecutive steps next to that station
        self.explore_goal = np.full((N, 2), -1, dtype=np.int64)
        self.next_frontier_search = np.zeros(N, dtype=np.int64)
        self.num_stations = np.zeros(N, dtype=np.int64)
        self.station_capacity = 0
        self._grow_station_tables(16)

    # -- memory ------------------------------------------------------------------------------------

    def _grow_station_tables(self, capacity: int) -> None:
        """(Re)allocate the per-agent station tables [N, capacity], keeping their contents."""
        N = self.num_agents
        fills = {
            "st_pos": (np.zeros((N, capacity, 2), dtype=np.int64)),  # map cell
            "st_kind": np.zeros((N, capacity), dtype=np.int64),
            "st_valid": np.zeros((N, capacity), dtype=bool),
            "st_stock": np.zeros((N, capacity), dtype=np.int64),  # last observed stock ...
            "st_seen": np.zeros((N, capacity), dtype=np.int64),  # ... and when
            # Users seen next to it (and when): they keep taking its stock while they stay.
            "st_parked": np.zeros((N, capacity), dtype=np.int64),
            "st_parked_t": np.full((N, capacity), -(10**6), dtype=np.int64),
            # Until when it counts as occupied because other agents blocked our way to it.
            "st_blocked_until": np.zeros((N, capacity), dtype=np.int64),
        }
        for name, new in fills.items():
            old = getattr(self, name, None)
            if old is not None:
                new[:, : old.shape[1]] = old
            setattr(self, name, new)
        self.station_capacity = capacity

    def reset(self, agents: np.ndarray) -> None:
        """Forget everything about ``agents`` (indices): a new episode starts for them."""
        if agents.size == 0:
            return
        f = self.facts
        self.map[agents] = UNKNOWN
        self.station_id[agents] = -1
        self.pos[agents] = self.origin
        self.seen_lo[agents] = self.origin - f.centre
        self.seen_hi[agents] = self.origin + f.centre
        self.t[agents] = 0
        self.last_action[agents] = f.noop
        self.prev_static[agents] = UNKNOWN
        self.prev_target_free[agents] = False
        self.prev_target_walkable[agents] = False
        self.stuck[agents] = 0
        self.target[agents] = -1
        self.adjacent_steps[agents] = 0
        self.explore_goal[agents] = -1
        self.next_frontier_search[agents] = 0
        self.num_stations[agents] = 0
        self.st_valid[agents] = False
        self.st_parked[agents] = 0
        self.st_parked_t[agents] = -(10**6)
        self.st_blocked_until[agents] = 0

    # -- acting ------------------------------------------------------------------------------------

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Actions [num_agents] for observations ``obs`` uint8 [num_agents, tokens, 3]; ``starts`` bool
        [num_agents] marks observations that are the first of a new episode (that agent's memory is reset)."""
        f = self.facts
        obs = np.asarray(obs)
        starts = np.asarray(starts, dtype=bool)
        if obs.shape[0] != self.num_agents or starts.shape != (self.num_agents,):
            raise ValueError(f"expected observations and starts for {self.num_agents} agents, got "
                             f"{obs.shape} and {starts.shape}")
        self.reset(np.flatnonzero(starts))
        self.t[~starts] += 1

        code, visible, inventory = self._decode(obs)
        own_inventory = inventory[:, f.centre, f.centre, :]
        static = np.where(visible, np.where(code == AGENT, FREE, code), UNKNOWN).astype(np.int8)
        self._localise(static, starts)
        self._remember(static, inventory)
        usable = self._usable_units(own_inventory)
        scores = self._score_stations(code, visible, inventory, usable)
        actions = self._choose_actions(scores, usable, code, visible)

        # What the next step's dead reckoning needs to know about this step.
        self.prev_static = static
        self.last_action = actions
        d = self.move_delta[actions]
        entered = code[np.arange(len(actions)), f.centre + d[:, 0], f.centre + d[:, 1]]
        self.prev_target_free = self.is_move[actions] & (entered == FREE)
        self.prev_target_walkable = self.is_move[actions] & ((entered == FREE) | (entered == AGENT))
        return actions

    def _decode(self, obs: np.ndarray):
        """Per agent: the code of each window cell [N, W, W], which cells were reported [N, W, W] and the
        inventory tokens on each cell [N, W, W, resources]."""
        f = self.facts
        N, W = obs.shape[0], f.window
        loc = obs[:, :, 0].astype(np.int64)
        feat = obs[:, :, 1].astype(np.int64)
        val = obs[:, :, 2].astype(np.int64)
        row, col = loc >> 4, loc & 15
        spatial = (loc < GLOBAL_LOCATION) & (row < W) & (col < W)
        agent_of_token = np.broadcast_to(np.arange(N)[:, None], loc.shape)

        code = np.zeros((N, W, W), dtype=np.int8)
        is_tag = spatial & (feat == f.feature["tag"])
        tag_code = f.tag_code[np.where(is_tag, val, 0)]
        put = is_tag & (tag_code != _NO_TYPE)
        code[agent_of_token[put], row[put], col[put]] = tag_code[put]

        inventory = np.zeros((N, W, W, len(f.resources)), dtype=np.int64)
        for feature_id, r, multiplier in f.inventory_features:
            sel = spatial & (feat == feature_id)
            np.add.at(inventory[..., r], (agent_of_token[sel], row[sel], col[sel]), val[sel] * multiplier)

        visible = np.broadcast_to(self.disc, (N, W, W)).copy()
        # A full token list may have dropped the farthest cells: trust only cells nearer than the last
        # token's (tokens come nearest first).
        full = obs[:, -1, 0] != EMPTY_TOKEN
        if full.any():
            last = np.where(spatial, np.abs(row - f.centre) + np.abs(col - f.centre), -1).max(axis=1)
            visible &= ~(full[:, None, None] & (self.cell_manhattan[None] >= last[:, None, None]))
        return code, visible, inventory

    def _localise(self, static: np.ndarray, starts: np.ndarray) -> None:
        """Dead reckoning: did last step's move happen? Compare the walls and stations in view with the
        previous view, unshifted and shifted by the move."""
        f = self.facts
        N, W = static.shape[0], f.window
        moving = self.is_move[self.last_action] & ~starts
        if not moving.any():
            self.stuck[:] = 0
            return
        d = self.move_delta[self.last_action]
        pad = np.full((N, W + 2, W + 2), UNKNOWN, dtype=np.int8)
        pad[:, 1:-1, 1:-1] = self.prev_static
        ar = np.arange(W)
        rows = ar[None, :] + 1 + d[:, 0:1]
        cols = ar[None, :] + 1 + d[:, 1:2]
        shifted = pad[np.arange(N)[:, None, None], rows[:, :, None], cols[:, None, :]]  # the old view, moved
        known_now = static != UNKNOWN
        mismatch_moved = (known_now & (shifted != UNKNOWN) & (static != shifted)).sum(axis=(1, 2))
        mismatch_stayed = (known_now & (self.prev_static != UNKNOWN) & (static != self.prev_static)).sum(axis=(1, 2))
        moved = np.where(mismatch_moved == mismatch_stayed, self.prev_target_free, mismatch_moved < mismatch_stayed)
        moved &= moving
        self.pos[moved] += d[moved]
        # Stay inside the map array (only a localisation error could leave it).
        np.clip(self.pos, f.centre + PLAN_RADIUS, self.map_size - f.centre - PLAN_RADIUS - 1, out=self.pos)
        self.stuck = np.where(moving & self.prev_target_walkable & ~moved, self.stuck + 1, 0)

    def _remember(self, static: np.ndarray, inventory: np.ndarray) -> None:
        """Write the visible cells into the map and the visible stations' stock into the station table."""
        f = self.facts
        N, W = static.shape[0], f.window
        n, r, c = np.nonzero(static != UNKNOWN)
        mr = self.pos[n, 0] + r - f.centre
        mc = self.pos[n, 1] + c - f.centre
        values = static[n, r, c]
        self.map[n, mr, mc] = values
        np.minimum(self.seen_lo, self.pos - f.centre, out=self.seen_lo)
        np.maximum(self.seen_hi, self.pos + f.centre, out=self.seen_hi)

        is_station = values >= STATION0
        if is_station.any():
            sn, sr, sc = n[is_station], r[is_station], c[is_station]
            smr, smc = mr[is_station], mc[is_station]
            kinds = values[is_station].astype(np.int64) - STATION0
            sid = self.station_id[sn, smr, smc].astype(np.int64)
            # A remembered station of another kind on this cell means we were mislocalised: replace it.
            wrong = (sid >= 0) & (self.st_kind[sn, np.maximum(sid, 0)] != kinds)
            self.st_valid[sn[wrong], sid[wrong]] = False
            sid[wrong] = -1
            new = np.flatnonzero(sid < 0)
            if new.size:
                need = int(self.num_stations.max() + np.bincount(sn[new], minlength=N).max())
                if need > self.station_capacity:
                    self._grow_station_tables(max(need, 2 * self.station_capacity))
                for i in new.tolist():  # new sightings are rare: a loop is fine
                    a, j = sn[i], int(self.num_stations[sn[i]])
                    self.num_stations[a] += 1
                    self.st_pos[a, j] = (smr[i], smc[i])
                    self.st_kind[a, j] = kinds[i]
                    self.st_valid[a, j] = True
                    self.st_parked[a, j] = 0
                    self.st_parked_t[a, j] = -(10**6)
                    self.st_blocked_until[a, j] = 0
                    self.station_id[a, smr[i], smc[i]] = j
                    sid[i] = j
            self.st_stock[sn, sid] = inventory[sn, sr, sc, f.stock_resource[kinds]]
            self.st_seen[sn, sid] = self.t[sn]

        # Remembered stations whose cell is in view but shows something else were mislocalised ghosts.
        S = int(self.num_stations.max())
        if S:
            rel_r = self.st_pos[:, :S, 0] - self.pos[:, None, 0] + f.centre
            rel_c = self.st_pos[:, :S, 1] - self.pos[:, None, 1] + f.centre
            inside = (rel_r >= 0) & (rel_r < W) & (rel_c >= 0) & (rel_c < W) & self.st_valid[:, :S]
            a_idx, s_idx = np.nonzero(inside)
            seen_code = static[a_idx, rel_r[a_idx, s_idx], rel_c[a_idx, s_idx]]
            ghost = (seen_code != UNKNOWN) & (seen_code != self.st_kind[a_idx, s_idx] + STATION0)
            ga, gs = a_idx[ghost], s_idx[ghost]
            self.st_valid[ga, gs] = False
            self.station_id[ga, self.st_pos[ga, gs, 0], self.st_pos[ga, gs, 1]] = -1

    def _usable_units(self, own_inventory: np.ndarray) -> np.ndarray:
        """Uses of each station kind the agent's inventory allows now, [N, K]: what the station needs the
        user to hold, what it takes from the user and the room left for what it gives."""
        f = self.facts
        usable = np.zeros((own_inventory.shape[0], len(f.kinds)), dtype=np.int64)
        for k, sk in enumerate(f.kinds):
            limit = f.inventory_limit[sk.gives]
            if sk.gives in f.intermediates:
                limit = min(limit, HOARD_LIMIT)
            units = (limit - own_inventory[:, sk.gives]) // max(sk.gives_amount, 1)
            for r, amount in sk.needs.items():
                units = np.where(own_inventory[:, r] >= amount, units, 0)
            for r, amount in sk.consumes.items():
                units = np.minimum(units, own_inventory[:, r] // amount)
            usable[:, k] = np.maximum(units, 0)
        return usable

    def _score_stations(self, code, visible, inventory, usable) -> np.ndarray:
        """Gain per step of heading for each remembered station, [N, S] (-inf: not worth considering)."""
        f = self.facts
        N = code.shape[0]
        S = int(self.num_stations.max())
        if S == 0:
            return np.full((N, 0), -np.inf, dtype=np.float32)
        kind = self.st_kind[:, :S]
        dist = np.abs(self.st_pos[:, :S] - self.pos[:, None, :]).sum(axis=2)
        dist = np.maximum(dist, 1)
        usable_here = np.take_along_axis(usable, kind, axis=1)

        # Predicted stock when our bump lands (after dist - 1 more steps): the last observed stock plus the
        # restocks since, up to the capacity; and the wait from then to the next restock.
        bump_t = np.minimum(self.t[:, None] + dist - 1, f.max_steps)
        seen_t = np.minimum(self.st_seen[:, :S], f.max_steps)
        predicted = np.zeros((N, S), dtype=np.int64)
        wait = np.zeros((N, S), dtype=np.float64)
        period = np.zeros((N, S), dtype=np.float64)
        for k, sk in enumerate(f.kinds):
            this_kind = kind == k
            if not this_kind.any():
                continue
            stock = np.minimum(sk.capacity, self.st_stock[:, :S] + sk.restocked[bump_t] - sk.restocked[seen_t])
            predicted = np.where(this_kind, stock, predicted)
            next_restock = sk.next_restock[bump_t]
            wait = np.where(this_kind, np.where(next_restock <= f.max_steps, next_restock - bump_t, np.inf), wait)
            period = np.where(this_kind, sk.period, period)

        contenders = self._contention(code, visible, inventory, kind, dist, S)
        units = np.minimum(predicted - contenders, usable_here)
        gain = f.gain[kind]
        collect = gain * units / (dist - 1 + np.maximum(units, 1))
        # Nothing left for us on arrival: one unit after the next restock, and closer agents keep taking
        # what is restocked while they stay.
        waiting = gain / (dist + wait + contenders * period * CONTENTION_PERIODS)
        score = np.where(units >= 1, collect, waiting)
        score = np.where(self.st_valid[:, :S] & (usable_here > 0) & (gain > 0), score, -np.inf)
        keep = np.flatnonzero((self.target >= 0) & (self.target < S))
        score[keep, self.target[keep]] *= STICKINESS
        return score.astype(np.float32)

    def _contention(self, code, visible, inventory, kind, dist, S) -> np.ndarray:
        """Agents expected to take a station's stock before us, [N, S].

        A visible agent counts for a station if it can use it, is presumably heading for it (no station it
        can use is nearer to it) and is closer to it than we are; at equal distance it counts unless we have
        been standing at the station for a while (a newcomer yields). Where we cannot see all around a
        station now, the users last seen next to it count for PARKED_MEMORY steps (a user parked out of view
        would otherwise make us walk back and forth), and so does a station we found blocked."""
        f = self.facts
        N, W = code.shape[0], f.window
        closer_now = np.zeros((N, S), dtype=np.int64)
        parked_now = np.zeros((N, S), dtype=np.int64)
        others = (code == AGENT) & visible
        others[:, f.centre, f.centre] = False
        if others.any():
            # One row per (observer, visible agent) pair, grouped by observer.
            an, ar, ac = np.nonzero(others)
            o_pos = np.stack([ar - f.centre, ac - f.centre], axis=1)  # relative to the observer
            held = inventory[an, ar, ac]
            can_use_kind = np.ones((an.size, len(f.kinds)), dtype=bool)
            for k, sk in enumerate(f.kinds):
                for r, amount in sk.needs.items():
                    can_use_kind[:, k] &= held[:, r] >= amount
            can_use = np.take_along_axis(can_use_kind, kind[an], axis=1) & self.st_valid[an, :S]  # [P, S]
            st_rel = self.st_pos[an, :S] - self.pos[an, None, :]
            o_dist = np.abs(st_rel - o_pos[:, None, :]).sum(axis=2)  # [P, S]
            nearest = np.where(can_use, o_dist, np.iinfo(np.int64).max).min(axis=1)
            heading = can_use & (o_dist == nearest[:, None])
            incumbent = np.zeros((N, S), dtype=bool)
            holding = np.flatnonzero((self.target >= 0) & (self.target < S) & (self.adjacent_steps >= INCUMBENT_STEPS))
            incumbent[holding, self.target[holding]] = True
            my_dist = dist[an]
            closer = (o_dist < my_dist) | ((o_dist == my_dist) & ~incumbent[an])
            # Sum the pairs of each observer (rows are grouped by observer).
            observers, first = np.unique(an, return_index=True)
            closer_now[observers] = np.add.reduceat((closer & heading).astype(np.int64), first, axis=0)
            parked_now[observers] = np.add.reduceat(((o_dist == 1) & heading).astype(np.int64), first, axis=0)

        # Is every neighbour of the station in view?
        rel_r = self.st_pos[:, :S, 0] - self.pos[:, None, 0] + f.centre
        rel_c = self.st_pos[:, :S, 1] - self.pos[:, None, 1] + f.centre
        around = np.ones((N, S), dtype=bool)
        observer = np.arange(N)[:, None]
        for _, (dr, dc) in f.moves:
            r, c = rel_r + dr, rel_c + dc
            inside = (r >= 0) & (r < W) & (c >= 0) & (c < W)
            around &= inside & visible[observer, np.clip(r, 0, W - 1), np.clip(c, 0, W - 1)]
        parked = self.st_parked[:, :S]
        parked_t = self.st_parked_t[:, :S]
        parked_t[...] = np.where(around | (parked_now > 0), self.t[:, None], parked_t)
        parked[...] = np.where(around, parked_now, np.maximum(parked, parked_now))
        remembered = ~around & (self.t[:, None] - parked_t <= PARKED_MEMORY)
        contenders = np.where(remembered, np.maximum(closer_now, parked), closer_now)
        blocked = self.t[:, None] < self.st_blocked_until[:, :S]
        return np.maximum(contenders, blocked)

    def _choose_actions(self, scores, usable, code, visible) -> np.ndarray:
        """Pick each agent's goal (best station, or a frontier to explore) and the move towards it."""
        f = self.facts
        N, S = scores.shape
        best = np.argmax(scores, axis=1) if S else np.zeros(N, dtype=np.int64)
        best_score = scores[np.arange(N), best] if S else np.full(N, -np.inf)
        # Exploring is worth what finding a station of a usable kind would be, while some are undiscovered.
        known = np.stack([((self.st_kind[:, :S] == k) & self.st_valid[:, :S]).sum(axis=1)
                          for k in range(len(f.kinds))], axis=1)
        undiscovered = np.where(self.kind_count > 0,
                                np.clip((self.kind_count - known) / EXPLORE_UNDISCOVERED, 0.0, 1.0), 1.0)
        explore_score = np.max(np.where(usable > 0, f.gain * undiscovered, 0.0), axis=1) / EXPLORE_STEPS
        explore_score = np.where(self.target < 0, explore_score * STICKINESS, explore_score)
        go_station = best_score > explore_score
        explorers = np.flatnonzero(~go_station)
        if explorers.size:
            self._update_explore_goals(explorers)
        # With no frontier left, still walk to the best station there is: waiting next to it beats wandering.
        go_station |= (self.explore_goal[:, 0] < 0) & np.isfinite(best_score)
        new_target = np.where(go_station, best, -1)
        goal = np.where(go_station[:, None], self.st_pos[np.arange(N), best], self.explore_goal)
        offset = goal - self.pos
        steps_away = np.abs(offset).sum(axis=1)
        has_goal = goal[:, 0] >= 0
        at_target = go_station & (steps_away == 1)
        self.adjacent_steps = np.where(at_target & (new_target == self.target), self.adjacent_steps + 1,
                                       at_target.astype(np.int64))
        self.target = new_target

        actions = np.full(N, f.noop, dtype=np.int64)
        # Next to the goal: step (or bump) straight into it; farther: search a path.
        adjacent = has_goal & (steps_away == 1)
        for action, (dr, dc) in f.moves:
            actions[adjacent & (offset[:, 0] == dr) & (offset[:, 1] == dc)] = action
        far = np.flatnonzero(has_goal & (steps_away > 1))
        if far.size:
            actions[far] = self._plan(far, goal[far], code[far], visible[far])
        # An agent that keeps walking into others on its way to a station gives that station up for a while
        # and takes a random step (agents blocking each other would otherwise stay stuck).
        stuck = self.stuck >= STUCK_STEPS
        blocked = np.flatnonzero(stuck & (self.target >= 0))
        self.st_blocked_until[blocked, self.target[blocked]] = self.t[blocked] + PARKED_MEMORY
        lost = ~has_goal | (steps_away == 0) | stuck
        actions[lost] = self.move_actions[self.rng.integers(0, len(self.move_actions), size=int(lost.sum()))]
        self.stuck[lost] = 0
        return actions

    def _update_explore_goals(self, agents: np.ndarray) -> None:
        """Give each of ``agents`` whose explore goal is reached or turned out blocked a new one."""
        for a in agents.tolist():
            gr, gc = self.explore_goal[a]
            # Keep walking to a goal even once it is in view: heading on through it opens up new ground.
            far_away = abs(gr - self.pos[a, 0]) + abs(gc - self.pos[a, 1]) > 1
            if gr >= 0 and self.map[a, gr, gc] in (UNKNOWN, FREE) and far_away:
                continue
            if gr < 0 and self.t[a] < self.next_frontier_search[a]:
                continue  # searched recently and found nothing
            self.explore_goal[a] = self._nearest_frontier(a)
            if self.explore_goal[a, 0] < 0:
                self.next_frontier_search[a] = self.t[a] + FRONTIER_RETRY_STEPS

    def _nearest_frontier(self, a: int) -> tuple[int, int]:
        """An unknown cell nearest to agent ``a`` by walking distance over known free cells (random among
        equals), or (-1, -1).

        Cells outside the map show no tokens, just like free cells, so the "free" cells seen beyond a wall
        are mirages: a breadth-first flood from the agent never crosses the wall to reach them."""
        r0, c0 = np.maximum(self.seen_lo[a] - 1, 0)
        r1, c1 = np.minimum(self.seen_hi[a] + 2, self.map_size)
        box = self.map[a, r0:r1, c0:c1]
        walkable = box == FREE
        unknown = box == UNKNOWN
        reach = np.zeros_like(walkable)
        reach[self.pos[a, 0] - r0, self.pos[a, 1] - c0] = True
        while True:
            grown = reach.copy()
            grown[1:] |= reach[:-1]
            grown[:-1] |= reach[1:]
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            hits = grown & unknown
            if hits.any():
                hr, hc = np.nonzero(hits)
                i = int(self.rng.integers(hr.size))
                return int(hr[i] + r0), int(hc[i] + c0)
            grown &= walkable
            if np.array_equal(grown, reach):
                return -1, -1
            reach = grown

    def _plan(self, agents: np.ndarray, goal: np.ndarray, code: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """First move of a shortest path for each of ``agents`` to its ``goal`` (a map cell; a station goal
        is bumped into), searched in a window around it over its remembered map; ``code`` and ``visible``
        are these agents' decoded views, whose agents are costly cells."""
        f = self.facts
        N, W = agents.size, f.window
        R = PLAN_RADIUS
        P = 2 * R + 1
        pos = self.pos[agents]
        span = np.arange(-R, R + 1)
        rows = pos[:, 0:1] + span[None, :]
        cols = pos[:, 1:2] + span[None, :]
        local = self.map[agents[:, None, None], rows[:, :, None], cols[:, None, :]]
        # Cost of stepping onto each cell; unknown cells are assumed free.
        enter = np.where((local == FREE) | (local == UNKNOWN), np.float32(1.0), _INF).astype(np.float32)
        others = (code == AGENT) & visible
        others[:, f.centre, f.centre] = False
        off = R - f.centre
        enter[:, off:off + W, off:off + W] += np.where(others, np.float32(AGENT_COST), np.float32(0.0))

        # Cost-to-go: 0 at a goal inside the window; a goal outside is reached through the border cells,
        # which start at their straight-line distance to it.
        value = np.full((N, P, P), _INF, dtype=np.float32)
        g_r = goal[:, 0] - pos[:, 0] + R
        g_c = goal[:, 1] - pos[:, 1] + R
        inside = (g_r >= 0) & (g_r < P) & (g_c >= 0) & (g_c < P)
        idx = np.flatnonzero(inside)
        value[idx, g_r[idx], g_c[idx]] = 0.0
        enter[idx, g_r[idx], g_c[idx]] = 1.0  # a station goal is "entered" by bumping it
        outside = np.flatnonzero(~inside)
        if outside.size:
            cells = np.arange(P)
            estimate = (np.abs(cells[None, :, None] - g_r[outside, None, None])
                        + np.abs(cells[None, None, :] - g_c[outside, None, None])).astype(np.float32)
            border = np.zeros((P, P), dtype=bool)
            border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
            value[outside] = np.where(border[None] & (enter[outside] < _INF), estimate, _INF)
        # Relaxation: value = min(value, min over neighbours of (neighbour's value + cost to enter it)).
        via = value + enter
        for _ in range(PLAN_SWEEPS):
            np.minimum(value[:, 1:, :], via[:, :-1, :], out=value[:, 1:, :])
            np.minimum(value[:, :-1, :], via[:, 1:, :], out=value[:, :-1, :])
            np.minimum(value[:, :, 1:], via[:, :, :-1], out=value[:, :, 1:])
            np.minimum(value[:, :, :-1], via[:, :, 1:], out=value[:, :, :-1])
            np.add(value, enter, out=via)
        # Step to the neighbour with the smallest cost-to-go (ties at random); nowhere to go: wait.
        options = np.stack([via[:, R + dr, R + dc] for _, (dr, dc) in f.moves], axis=1)
        options += self.rng.random(options.shape, dtype=np.float32) * np.float32(0.01)
        actions = self.move_actions[np.argmin(options, axis=1)]
        actions[options.min(axis=1) >= _INF] = f.noop
        return actions
