"""The registry of methods: ``memory.kind`` names a registered memory class (docs/method.md#hybrid-memory,
#successors, #o2cap).

A method is one file: a ``SlotMemory`` subclass decorated with ``@register_memory("name")``. The
trainer builds whatever class ``memory.kind`` names through its ``from_config``, and asks it
everything that differs between methods (``spcl.memory.base``); a subclass of a registered memory
registered under a new name trains with its inherited construction and behaviour, overriding only
what it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from spcl.memory.base import SlotMemory

__all__ = ["memory_class", "register_memory", "registered_memories"]

M = TypeVar("M", bound=type[SlotMemory])

_MEMORIES: dict[str, type[SlotMemory]] = {}


def register_memory(name: str) -> Callable[[M], M]:
    """Class decorator: ``memory.kind: <name>`` then trains with the class. Registering another class
    under a taken name is an error (a silently replaced method would train something else)."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a memory kind is a short name of letters, digits, - and _, got {name!r}")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, SlotMemory)):
            raise TypeError(f"register_memory({name!r}) decorates a subclass of spcl.memory.SlotMemory, got {cls!r}")
        taken = _MEMORIES.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(f"memory kind {name!r} is already registered to {taken.__module__}.{taken.__qualname__}")
        cls.kind = name
        _MEMORIES[name] = cls
        return cls

    return decorate


def registered_memories() -> dict[str, type[SlotMemory]]:
    """Every registered kind and its class, in the order they were registered."""
    return dict(_MEMORIES)


def memory_class(kind: str) -> type[SlotMemory]:
    """The class ``memory.kind`` names; an unknown kind is an error that lists the registered ones."""
    try:
        return _MEMORIES[kind]
    except KeyError:
        raise ValueError(
            f"memory.kind {kind!r} is not a registered memory; registered: {', '.join(_MEMORIES)} "
            "(add one with @spcl.memory.register_memory)"
        ) from None
