"""The backend registry: backends by name.

Built-in backends are listed here as ``module:class`` strings and imported only when
chosen, so ``import runalways`` loads just the one it uses. Third-party backends register
under the entry-point group ``runalways.backends``; entry points are read only when a
name is not built in (importlib.metadata is too slow for every cron start).
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from runalways.backends.base import Backend

ENTRY_POINT_GROUP = "runalways.backends"

BUILTIN = {
    "fcntl": "runalways.backends.flock:FlockBackend",
    "pidfile": "runalways.backends.pidfile:PidfileBackend",
    "lockf": "runalways.backends.lockf:LockfBackend",
    "ofd": "runalways.backends.ofd:OfdBackend",
    "portalocker": "runalways.backends.portalock:PortalockerBackend",
    "postgres": "runalways.backends.postgres:PostgresBackend",
    "redis": "runalways.backends.redis:RedisBackend",
}


def default_name() -> str:
    return "portalocker" if os.name == "nt" else "fcntl"


def _load(spec: str) -> "type[Backend]":
    module_name, _, class_name = spec.partition(":")
    module = __import__(module_name, fromlist=[class_name])
    backend: type[Backend] = getattr(module, class_name)
    return backend


def entry_points(group: str) -> "list[EntryPoint]":
    """The entry points of ``group`` of every installed distribution (slow: only off the common path)."""
    from importlib.metadata import entry_points as installed

    found = installed()
    if hasattr(found, "select"):  # Python 3.10 and later
        return list(found.select(group=group))
    return list(found.get(group, []))  # type: ignore[arg-type,attr-defined,unused-ignore]


def _entry_points() -> "dict[str, EntryPoint]":
    return {entry.name: entry for entry in entry_points(ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every registered backend name: built in first, then those from entry points."""
    return list(BUILTIN) + sorted(set(_entry_points()) - set(BUILTIN))


def get_class(name: str, variable: str = "RUNALWAYS_BACKEND") -> "type[Backend]":
    """The backend class registered as ``name``, whether or not it can work here.

    An unknown name raises SettingError naming ``variable`` and listing the known ones.
    """
    if name in BUILTIN:
        return _load(BUILTIN[name])
    entry = _entry_points().get(name)
    if entry is None:
        from runalways.errors import SettingError

        raise SettingError(f"{variable}={name!r} is not a known backend; choose one of: {', '.join(names())}")
    backend: type[Backend] = entry.load()
    return backend


def chosen_backend(name: str, variable: str) -> "type[Backend]":
    """The backend ``name`` given as ``variable`` says, ready to use here; "" is the default."""
    return get(name or default_name(), variable)


def get(name: str, variable: str = "RUNALWAYS_BACKEND") -> "type[Backend]":
    """The backend class registered as ``name``, ready to use here.

    A backend that cannot work on this machine raises BackendUnavailable saying why.
    """
    backend = get_class(name, variable)
    reason = backend.unavailable()
    if reason is not None:
        from runalways.errors import BackendUnavailable

        raise BackendUnavailable(f"the {name} backend cannot work here: {reason}")
    return backend
