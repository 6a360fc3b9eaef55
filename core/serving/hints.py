"""What a streaming api's function looks like: a generator, and the type of its items.

Pure inspection of functions and type hints, shared by `codecs` (the OpenAPI kinds), `streaming`
(the framing) and `decorators`, so none of those needs to import another for it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any


def is_stream_function(func: Callable[..., Any]) -> bool:
    """True for a generator or async generator function (seen through `functools.wraps`)."""
    target = inspect.unwrap(func)
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)


_ITERATOR_ORIGINS = {
    "Iterator",
    "Iterable",
    "Generator",
    "AsyncIterator",
    "AsyncIterable",
    "AsyncGenerator",
}


def stream_item_hint(func: Callable[..., Any]) -> Any:
    """The item type of a streaming api: `X` from `-> Iterator[X]`, `Generator[X, ...]`,
    `AsyncIterator[X]` or `AsyncGenerator[X, ...]`; `Any` when the hint says nothing."""
    try:
        hint = typing.get_type_hints(inspect.unwrap(func)).get("return", Any)
    except Exception:
        return Any
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is not None and getattr(origin, "__name__", "") in _ITERATOR_ORIGINS and args:
        return args[0]
    return Any
