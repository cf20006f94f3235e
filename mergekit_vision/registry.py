"""One generic plugin registry, one instance per kind of plugin.

Contract
--------
- A plugin is a class registered under a short name with ``@REGISTRY.register("name")``.
- The class declares its parameters as a nested pydantic model named ``Params``
  (``extra="forbid"`` so a typo in a recipe is an error, never a silent default).
- ``REGISTRY.get(name)`` returns the class; an unknown name raises :class:`UnknownPluginError`
  listing every valid name.
- A ``Params`` field that names another part of the recipe (a teacher, head or task) says so with
  :class:`RefersTo` (``teacher: TeacherName``); the recipe checks every such name exists.
- Each kind's instance lives beside the base class its plugins subclass, typed by it
  (``contracts.TEACHERS: Registry[Teacher]``, ``strategies.replay.base.REPLAY``, ...), and that
  base declares the one classmethod signature its plugins share (``build``; an app's
  ``prepare``). This module sits below every base, so it knows the instances only by kind:
  :data:`ALL_REGISTRIES` (filled as the bases are imported, which the built-in list does).
- Built-ins are found through one explicit import list (:mod:`mergekit_vision.plugins`);
  plugins of other packages through the entry-point group ``mergekit_vision.<kind>``, where each
  entry point names a module (imported for its ``register`` side effect) or a class (registered
  under the entry point's name).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class PluginParams(BaseModel):
    """Base of every plugin's ``Params``: frozen and strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RefersTo:
    """Marks a ``Params`` field whose value names an entry of the recipe section ``section``
    (``teachers``, ``heads`` or ``tasks``); in a ``dict`` key type it marks the keys."""

    section: str


TeacherName = Annotated[str, RefersTo("teachers")]
HeadName = Annotated[str, RefersTo("heads")]
TaskName = Annotated[str, RefersTo("tasks")]


class UnknownPluginError(KeyError):
    """A recipe or a call named a plugin that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(
            f"unknown {kind} plugin {name!r}; valid names: {', '.join(valid) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


@dataclass(frozen=True)
class PluginEntry(Generic[T]):
    name: str
    cls: type[T]
    source: str  # "built-in" or the distribution that provided it

    @property
    def params_model(self) -> type[PluginParams]:
        return getattr(self.cls, "Params", PluginParams)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""


class Registry(Generic[T]):
    """Named plugins of one kind (teachers, students, heads, ...); ``T`` is the kind's base class,
    so :meth:`get` returns a ``type[T]``."""

    def __init__(self, kind: str):
        self.kind = kind
        self.group = f"mergekit_vision.{kind}"
        self._entries: dict[str, PluginEntry[T]] = {}
        self._entry_points_loaded = False
        _BY_KIND.setdefault(kind, self)  # the first of a kind is the recipe's (tests make more)

    def register(self, name: str, *, source: str = "built-in") -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            existing = self._entries.get(name)
            if existing is not None and existing.cls is not cls:
                raise ValueError(
                    f"{self.kind} plugin {name!r} is registered twice: "
                    f"{existing.cls.__module__}.{existing.cls.__qualname__} and "
                    f"{cls.__module__}.{cls.__qualname__}"
                )
            self._entries[name] = PluginEntry(name=name, cls=cls, source=source)
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        return self.entry(name).cls

    def entry(self, name: str) -> PluginEntry[T]:
        self._load_entry_points()
        if name not in self._entries:
            raise UnknownPluginError(self.kind, name, self.names())
        return self._entries[name]

    def params_model(self, name: str) -> type[PluginParams]:
        return self.entry(name).params_model

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[PluginEntry[T]]:
        self._load_entry_points()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        _load_builtins()
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            before = set(self._entries)
            loaded = ep.load()
            if inspect.isclass(loaded) and ep.name not in self._entries:
                self.register(ep.name, source=dist)(loaded)
            for name in set(self._entries) - before:
                entry = self._entries[name]
                self._entries[name] = PluginEntry(name=name, cls=entry.cls, source=dist)

    def reset_entry_points(self) -> None:
        """Forget entry-point plugins so the next lookup scans again (after a pip install)."""
        self._entries = {k: v for k, v in self._entries.items() if v.source == "built-in"}
        self._entry_points_loaded = False


# Every kind, in the order `vmerge plugins` lists them; each instance is made beside its base.
KINDS = (
    "teachers",
    "students",
    "heads",
    "losses",
    "replay",
    "conflict",
    "weighting",
    "normalization",
    "upsampling",
    "datasets",
    "apps",
    "metrics",
    "trackers",
)
_BY_KIND: dict[str, Registry[Any]] = {}


class _AllRegistries(Mapping[str, "Registry[Any]"]):
    """The registries by kind; looking one up imports the built-ins first, and with them every
    base class and its registry."""

    def __getitem__(self, kind: str) -> Registry[Any]:
        _load_builtins()
        return _BY_KIND[kind]

    def __iter__(self) -> Iterator[str]:
        _load_builtins()
        return iter([*KINDS, *sorted(set(_BY_KIND) - set(KINDS))])

    def __len__(self) -> int:
        return len(list(iter(self)))


ALL_REGISTRIES: Mapping[str, Registry[Any]] = _AllRegistries()

# Where each registry lived before it moved beside its base: outside plugins that import it from
# here keep working (typed access: the base's module).
_MOVED = {name.upper(): name for name in KINDS}


def __getattr__(name: str) -> Registry[Any]:
    if name in _MOVED:
        return ALL_REGISTRIES[_MOVED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_builtins() -> None:
    from mergekit_vision.plugins import load_builtins  # imported here: it imports the plugins

    load_builtins()
