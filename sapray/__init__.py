"""sapray: pick the response-generation strategy that fine-tunes your model best (self-aligned perplexity).

The package's layers, each importing only from those below it (checked by import-linter's contract in
pyproject.toml): ``cli`` > ``jobs`` > ``present`` > ``dataplane`` > ``storage`` | ``console`` > ``config`` >
``engines`` > ``core``.

Modules of the earlier flat layout (``sapray.scoring``, ``sapray.metrics``, ``sapray.filters``, ...) still
import, as the same module objects at the places that now hold most of them, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old module -> its new place (modules that moved whole)
MOVED = {
    "actors": "dataplane.actors", "answers": "core.answers",
    "contexts": "core.contexts", "errors": "core.errors", "exemplars": "core.exemplars",
    "filter_job": "jobs.filter", "filters": "core.filters", "generate": "dataplane.teachers",
    "generate_job": "dataplane.fullset", "gsm8k": "dataplane.gsm8k", "html_report": "present.html_report",
    "metrics": "core.metrics", "mining": "dataplane.mining", "models": "engines.models",
    "order_stats": "core.order_stats",
    "placement": "dataplane.placement", "race": "core.race", "raydata": "dataplane.raydata", "read": "dataplane.read",
    "reduce": "core.reduce", "run_job": "jobs.run", "sample": "core.sample", "scoring": "core.scoring",
    "select": "dataplane.selection", "select_read": "dataplane.select_inputs", "shards": "dataplane.shards",
    "stages": "dataplane.stages", "teachers": "dataplane.api_teacher", "validate": "core.validation",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``sapray.<old>`` as the module at its new place (the same object, so state and patches are shared)."""

    def __init__(self) -> None:
        self.own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self.own_specs[spec.name] = module.__spec__  # the import system sets the old name's spec next
        return module

    def exec_module(self, module) -> None:
        # already executed at its new place: only give it back its own spec
        module.__spec__ = self.own_specs.pop(module.__spec__.name)


sys.meta_path.append(_MovedModules())
