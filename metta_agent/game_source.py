"""Where a run's game comes from, how it is checked, and how the run keeps it (docs/design.md, "Games").

A game is named by a *source*:

- a built-in name (``arena``, ``arena_room``, ``heart``: ``games.py``);
- ``path/to/file.py:factory`` or ``package.module:factory``: a function returning a ``MettaGridConfig``.
  Loading a Python file runs its code, as importing a module does;
- ``path/to/game.yaml`` / ``.yml`` / ``.json``: a ``MettaGridConfig`` serialized by mettagrid, validated by
  mettagrid's own model.

``game.mixture: [{game: SOURCE, weight: W}, ...]`` trains on several at once (``env/mixture.py``).

A run records its resolved games in ``<run>/games/<label>.json`` (mettagrid's serialization, loadable again
as a source) and in every checkpoint's metadata. Resume, eval and load read the recorded games, so they work
after the source file is gone; a source whose output changed since the run started is detected, and the
recorded game is used with a warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mettagrid.config.mettagrid_config import MettaGridConfig

from metta_agent.errors import UsageError, first_line
from metta_agent.files import read_text_file, write_text_atomically
from metta_agent.games import DEFAULT_GAME, GAME_NAMES, make_game

FILE_SUFFIXES = (".yaml", ".yml", ".json")
# The source recorded for a game given as a MettaGridConfig object (Python API): only its run's copy exists.
OBJECT_PREFIX = "object:"
GAMES_DIR = "games"  # in a run directory: one <label>.json per game
MAX_ACTION_NAMES = 99  # action embedding rows (blocks/heads.py MAX_ACTION_EMBEDDINGS) less the reserved row 0
SOURCE_HELP = (
    "a built-in game (" + ", ".join(GAME_NAMES) + "), FILE.py:FUNCTION or MODULE:FUNCTION (a function returning a "
    "MettaGridConfig; a Python file is run to load it), or a .yaml/.json MettaGridConfig file"
)


@dataclass(frozen=True)
class GameEntry:
    """One game of a run: what the user named, the name it is reported under, its weight and config."""

    source: str
    label: str
    weight: float
    config: MettaGridConfig

    @property
    def builtin(self) -> bool:
        return self.source in GAME_NAMES

    def with_max_steps(self, max_steps: int) -> "GameEntry":
        """The same game with episodes of ``max_steps``: a built-in game is rebuilt (its restock events run to the
        episode end), another one has its length set."""
        config = (make_game(self.source, max_steps=max_steps) if self.builtin
                  else with_episode_length(self.config.model_copy(deep=True), max_steps))
        config.label = self.label
        return GameEntry(self.source, self.label, self.weight, config)


class RecordedGameWarning(UserWarning):
    """A run's game source no longer gives the game the run recorded (the recorded one is used)."""


# ---- resolving sources -----------------------------------------------------------------------------------


def source_label(source: str) -> str:
    """The name a source's game is reported under: a built-in's name, the factory's name, the file's stem."""
    if source in GAME_NAMES:
        return source
    if source.startswith(OBJECT_PREFIX):
        return re.sub(r"[^A-Za-z0-9_.-]", "_", source.removeprefix(OBJECT_PREFIX)) or "game"
    _, sep, factory = source.rpartition(":")
    name = factory if sep and factory.isidentifier() else Path(source).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "game"


def load_game(source: str, max_steps: int | None = None) -> MettaGridConfig:
    """The ``MettaGridConfig`` a source names (a new object), its episode length set to ``max_steps`` if given."""
    if not isinstance(source, str) or not source.strip():
        raise UsageError(f"a game is named by a string ({SOURCE_HELP}), got {source!r}")
    if source in GAME_NAMES:
        return make_game(source, max_steps=max_steps)
    if source.startswith(OBJECT_PREFIX):
        raise UsageError(f"game '{source}' was given to metta_agent.train as a MettaGridConfig object; only a run "
                         "that recorded it can play it again")
    location, sep, factory = source.rpartition(":")
    if sep and factory.isidentifier():
        config = _from_factory(location, factory, source)
    elif source.endswith(FILE_SUFFIXES):
        config = load_game_file(Path(source))
    else:
        raise UsageError(f"unknown game '{source}'; a game is {SOURCE_HELP}")
    if max_steps is not None:
        with_episode_length(config, max_steps)
    config.label = source_label(source)
    return config


def with_episode_length(config: MettaGridConfig, max_steps: int) -> MettaGridConfig:
    """Set a user's game's episode length (in place; checked)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UsageError(f"max_steps must be a positive integer, got {max_steps!r}")
    config.game.max_steps = max_steps
    return config


def load_game_file(path: Path) -> MettaGridConfig:
    """A serialized ``MettaGridConfig`` (YAML or JSON), validated by mettagrid (with the game-value classes of
    ``<name>.value_types.json`` beside it, if any: see "recording" below)."""
    if not path.is_file():
        raise UsageError(f"game file '{path}' does not exist")
    text = read_text_file(path, "game file")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(f"game file '{path}' cannot be read: {first_line(error)}") from None
    value_types = None
    types_path = _types_path(path)
    if types_path.is_file():  # written beside a game a run recorded
        try:
            value_types = json.loads(read_text_file(types_path, "game value types file"))
        except ValueError as error:
            raise UsageError(f"game value types file '{types_path}' cannot be read: {first_line(error)}") from None
    return restore_game(data, value_types, str(path))


def _validation_line(error: Any) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "(top level)"
    count = error.error_count()
    return f"{where}: {first.get('msg', 'invalid')} ({count} error{'s' if count > 1 else ''})"


def _from_factory(location: str, factory: str, source: str) -> MettaGridConfig:
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise UsageError(f"game file '{path}' does not exist")
        module_name = f"metta_agent_game_{re.sub(r'[^A-Za-z0-9_]', '_', str(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"game file '{path}' cannot be loaded as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(module_name, None)
            raise UsageError(f"game file '{path}' failed to load: {type(error).__name__}: "
                             f"{first_line(error)}") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:
            raise UsageError(f"cannot import game module '{location}': {type(error).__name__}: "
                             f"{first_line(error)}") from None
    function = getattr(module, factory, None)
    if not callable(function):
        raise UsageError(f"game '{source}': '{location}' has no function '{factory}'")
    try:
        config = function()
    except Exception as error:
        raise UsageError(f"game factory '{source}' raised {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(config, MettaGridConfig):
        raise UsageError(f"game factory '{source}' returned {type(config).__name__}, not a MettaGridConfig")
    return config.model_copy(deep=True)


# ---- a run's games ----------------------------------------------------------------------------------------


def mixture_members(mixture: Any) -> list[tuple[str, float]]:
    """``game.mixture`` as ``[(source, weight), ...]``; a one-line error for any malformed entry."""
    if not isinstance(mixture, list) or not mixture:
        raise UsageError("game.mixture must be a list of {game: SOURCE, weight: W} entries")
    members = []
    for index, entry in enumerate(mixture):
        if isinstance(entry, str):
            entry = {"game": entry}
        if not isinstance(entry, dict) or "game" not in entry or set(entry) - {"game", "weight"}:
            raise UsageError(f"game.mixture entry {index} must be {{game: SOURCE, weight: W}}, got {entry!r:.80}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
            raise UsageError(f"game.mixture entry {index} ('{entry['game']}'): weight must be a positive number, "
                             f"got {weight!r}")
        members.append((str(entry["game"]), float(weight)))
    return members


def resolve_games(settings: Any) -> list[GameEntry]:
    """The games of a run's ``game`` settings (``name`` and ``max_steps``, or ``mixture``), checked."""
    if settings.mixture and settings.name != DEFAULT_GAME:
        raise UsageError(f"give game.name ('{settings.name}') or game.mixture, not both")
    sources = mixture_members(settings.mixture) if settings.mixture else [(settings.name, 1.0)]
    entries = [GameEntry(source, source_label(source), weight, load_game(source, settings.max_steps))
               for source, weight in sources]
    for entry in entries:
        check_game(entry.config, entry.label)
    return entries


def object_entry(config: MettaGridConfig, max_steps: int | None = None) -> GameEntry:
    """A game given as a ``MettaGridConfig`` object (checked; copied, so later changes to it do not leak in)."""
    if not isinstance(config, MettaGridConfig):
        raise UsageError(f"game must be a MettaGridConfig or a game source string, got {type(config).__name__}")
    config = config.model_copy(deep=True)
    if max_steps is not None:
        with_episode_length(config, max_steps)
    # mettagrid's default label says nothing about the game: such a config is reported as "game".
    label = source_label(OBJECT_PREFIX + (config.label if config.label and config.label != "mettagrid" else "game"))
    config.label = label
    check_game(config, label)
    return GameEntry(OBJECT_PREFIX + label, label, 1.0, config)


def game_mix(entries: Sequence[GameEntry]):
    """The ``GameMix`` that VecEnv plays (mixture members checked for compatibility)."""
    from metta_agent.env.mixture import GameMix

    return GameMix.of([(entry.label, entry.config, entry.weight) for entry in entries])


def run_label(entries: Sequence[GameEntry]) -> str:
    """How a run's game is named in run directories and messages."""
    return entries[0].label if len(entries) == 1 else "mixture"


def check_game(config: MettaGridConfig, label: str) -> None:
    """Refuse, in one line, a game whose agents or episodes metta-agent's policies cannot handle."""
    from gymnasium.spaces import Discrete
    from mettagrid.policy.policy_env_interface import PolicyEnvInterface

    game = config.game
    try:
        interface = PolicyEnvInterface.from_mg_cfg(config)
    except Exception as error:
        raise UsageError(f"game '{label}' cannot be built by mettagrid: {first_line(error)}") from None
    if not isinstance(interface.action_space, Discrete):
        raise UsageError(f"game '{label}' has a {type(interface.action_space).__name__} action space; "
                         "metta-agent's policies choose one discrete action per step")
    if len(interface.action_names) > MAX_ACTION_NAMES:
        raise UsageError(f"game '{label}' has {len(interface.action_names)} actions; metta-agent supports at most "
                         f"{MAX_ACTION_NAMES}")
    if not 1 <= interface.obs_height <= 15 or not 1 <= interface.obs_width <= 15:
        raise UsageError(f"game '{label}' has a {interface.obs_height}x{interface.obs_width} observation window; "
                         "token locations hold 4 bits per coordinate, so at most 15x15")
    if game.max_steps < 1:
        raise UsageError(f"game '{label}' has no episode length (max_steps {game.max_steps}): set game.max_steps, "
                         "so that episodes end")
    if game.actions.change_vibe.enabled and len(interface.vibe_action_names or ()) > 1:
        warnings.warn(f"game '{label}' has a change_vibe action stream; metta-agent's agents choose only the main "
                      "actions, and the vibe stream stays at change_vibe_default (agents keep the default vibe)",
                      stacklevel=2)


# ---- recording ------------------------------------------------------------------------------------------
#
# mettagrid 0.26 serializes its game-value union (``AnyGameValue``) without a type tag, and reads a
# ``MinGameValue`` or ``MaxGameValue`` back as a ``SumGameValue``: the arena's capped rewards (min(0.1 x ore, 1))
# would come back as sums (0.1 x ore + 1). A recorded game therefore carries, beside mettagrid's
# serialization, the class of every game value by its path (``<label>.value_types.json``), and is rebuilt
# with those classes.


def dump_game(config: MettaGridConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """``(mettagrid's serialization, {path of each game value: its class name})``."""
    return json.loads(config.model_dump_json()), _value_types(config, "")


def restore_game(data: Any, value_types: dict[str, str] | None, where: str) -> MettaGridConfig:
    """A ``MettaGridConfig`` from its serialization, each game value rebuilt as the class recorded for it."""
    from mettagrid.config import game_value
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise UsageError(f"game file '{where}' must hold a MettaGridConfig mapping (with a 'game' section)")
    if value_types:
        data = json.loads(json.dumps(data))
        # Innermost first, so a value's own values are already rebuilt when it is.
        for path in sorted(value_types, key=lambda p: p.count("/"), reverse=True):
            cls = getattr(game_value, str(value_types[path]), None)
            if not (isinstance(cls, type) and issubclass(cls, game_value.GameValue)):
                raise UsageError(f"game file '{where}': unknown game value type '{value_types[path]}' at {path}")
            parent, key = _locate(data, path)
            if parent is not None:
                try:
                    parent[key] = cls.model_validate(parent[key])
                except ValidationError as error:
                    raise UsageError(f"game file '{where}' is not a valid MettaGridConfig: {path}: "
                                     f"{_validation_line(error)}") from None
    try:
        return MettaGridConfig.model_validate(data)
    except ValidationError as error:
        raise UsageError(f"game file '{where}' is not a valid MettaGridConfig: {_validation_line(error)}") from None


def fingerprint(config: MettaGridConfig) -> str:
    """Equal for configs that play the same game (the serialization as it reads back, and the value classes)."""
    data, value_types = dump_game(config)
    return json.dumps([restore_game(data, value_types, "").model_dump_json(), value_types])


def _value_types(node: Any, path: str) -> dict[str, str]:
    from mettagrid.config.game_value import GameValue
    from pydantic import BaseModel

    found: dict[str, str] = {}
    if isinstance(node, GameValue):
        found[path] = type(node).__name__
    if isinstance(node, BaseModel):
        children = ((name, getattr(node, name)) for name in type(node).model_fields)
    elif isinstance(node, (list, tuple)):
        children = enumerate(node)
    elif isinstance(node, dict):
        children = node.items()
    else:
        return found
    for key, child in children:
        found.update(_value_types(child, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"))
    return found


def _locate(data: Any, path: str) -> tuple[Any, Any]:
    """``(container, key)`` of a JSON-pointer-like path in ``data``, or ``(None, None)`` if it is absent."""
    parts = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    node = data
    for index, part in enumerate(parts):
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, list) and not (isinstance(key, int) and key < len(node)):
            return None, None
        if isinstance(node, dict) and key not in node:
            return None, None
        if index == len(parts) - 1:
            return node, key
        node = node[key]
    return None, None


def _types_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(path.suffix) + ".value_types.json")


def record_games(run_dir: Path, entries: Sequence[GameEntry]) -> None:
    """Write each game to ``<run>/games/<label>.json`` (mettagrid's serialization) and
    ``<label>.value_types.json`` (its game values' classes), atomically."""
    directory = Path(run_dir) / GAMES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        data, value_types = dump_game(entry.config)
        path = directory / f"{entry.label}.json"
        write_text_atomically(_types_path(path), json.dumps(value_types, indent=2) + "\n")
        write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def games_metadata(entries: Sequence[GameEntry]) -> list[dict[str, Any]]:
    """The games as a checkpoint's metadata holds them."""
    records = []
    for e in entries:
        data, value_types = dump_game(e.config)
        records.append({"source": e.source, "label": e.label, "weight": e.weight, "config": data,
                        "value_types": value_types})
    return records


def games_from_metadata(metadata: dict[str, Any]) -> list[GameEntry] | None:
    """The games a checkpoint recorded, or None for a checkpoint from before games were recorded."""
    recorded = metadata.get("games")
    if not recorded:
        return None
    entries = []
    for item in recorded:
        config = restore_game(item["config"], item.get("value_types"), f"checkpoint game '{item['label']}'")
        config.label = item["label"]
        entries.append(GameEntry(item["source"], item["label"], float(item["weight"]), config))
    return entries


def recorded_games(settings: Any, run_dir: Path) -> list[GameEntry] | None:
    """The games recorded in ``run_dir`` for these settings, or None if the run recorded none (then the sources
    are resolved afresh). A source that is gone, fails or now gives another game is reported; the run's
    recorded game is used."""
    directory = Path(run_dir) / GAMES_DIR
    if not directory.is_dir():
        return None
    sources = mixture_members(settings.mixture) if settings.mixture else [(settings.name, 1.0)]
    entries = []
    for source, weight in sources:
        label = source_label(source)
        path = directory / f"{label}.json"
        if not path.is_file():
            return None
        recorded = load_game_file(path)
        recorded.label = label
        try:
            current = fingerprint(load_game(source, settings.max_steps))
        except UsageError as error:
            current = None
            if not source.startswith(OBJECT_PREFIX):
                print(f"note: game '{source}' cannot be loaded now ({error}); using the run's recorded game {path}",
                      file=sys.stderr)
        if current is not None and current != fingerprint(recorded):
            warnings.warn(f"game '{source}' now gives a different game than when the run started; using the run's "
                          f"recorded game {path}", RecordedGameWarning, stacklevel=2)
        entries.append(GameEntry(source, label, weight, recorded))
    return entries
