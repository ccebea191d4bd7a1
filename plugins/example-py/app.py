"""A sinker condition plugin in Python, with the same behaviour as the Rust template.

Config: a comma-separated list of measurement names, e.g. `cpu,mem`.
A point matches when its measurement is one of them.

Build: `./build.sh OUT.wasm` (needs `pip install componentize-py==0.25.1`).
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types
from wit_world.imports.host import log


# Set by `init`. Module state, not instance state: componentize-py may make a new
# `WitWorld` object per call. A plugin instance is single-threaded.
NAMES: frozenset[str] = frozenset()


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        names = [s.strip() for s in config.split(",") if s.strip()]
        if not names:
            raise Err('config must list measurement names, e.g. "cpu,mem"')
        log(types.LogLevel.INFO, f"matching measurements {names}")
        global NAMES
        NAMES = frozenset(names)

    def matches(self, points: types.Batch) -> list[bool]:
        # Columns are dictionary-encoded: test each distinct measurement once,
        # then look the answer up per point.
        column = points.measurements()
        hit = [m is not None and m in NAMES for m in column.dict]
        return [hit[i] for i in column.index]
