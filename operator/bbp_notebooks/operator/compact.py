"""Index entries share what is the same in every session: pydantic's fields-set bookkeeping.

Each pydantic model keeps the names of the fields its input set (``model_fields_set``), a set of
its own: 216 bytes, 728 once it holds five names. A session's spec, status, four conditions and
queue info carry six of them, 4 kB of the 6.6 kB a parsed session takes (tracemalloc), and they
hold the same few combinations of names in every session. Sharing one set per combination keeps
the bookkeeping (``model_dump(exclude_unset=True)`` still tells set from default) at no cost per
session.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import BaseModel

__all__ = ["share_fields_sets"]


class _SharedNames(set[str]):
    """A fields set several models share: never changed in place. pydantic copies it before it
    adds names (``model_copy(update=...)``: ``copy()``, which gives a plain set here); assigning an
    attribute of a model that shares one would add to it in place, and raises instead."""

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)

    def _refuse(self, *_: object) -> NoReturn:
        raise TypeError("a shared fields set is never changed in place: use model_copy(update=)")

    add = update = discard = remove = pop = clear = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse
    intersection_update = difference_update = symmetric_difference_update = _refuse


_SHARED: dict[frozenset[str], _SharedNames] = {}


def share_fields_sets(model: BaseModel) -> None:
    """Give ``model`` and every model within it (fields, lists, tuples) the one shared set of
    its combination of set field names."""
    for value in model.__dict__.values():
        if isinstance(value, BaseModel):
            share_fields_sets(value)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, BaseModel):
                    share_fields_sets(item)
    names = frozenset(model.__pydantic_fields_set__)
    shared = _SHARED.get(names)
    if shared is None:
        shared = _SHARED[names] = _SharedNames(names)
    object.__setattr__(model, "__pydantic_fields_set__", shared)
