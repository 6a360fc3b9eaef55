"""`torchshelf.Client`: call a `shelf serve` server from Python, tensors in and tensors out.

The client reads the server's `/schema` once and then offers one method per api
(`client.predict(x)`, `await client.predict.acall(x)`). Tensors travel as safetensors bodies
(no float formatting or parsing on either side); other values go as JSON.

A streaming api (a generator on the server) answers with a `Stream` to iterate
(`for token in client.generate(prompt="...")`, or `async for ... in client.generate.astream(...)`);
it reads Server-Sent Events, and closing it early hangs up, which stops the server's generator.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from ..errors import ShelfError, UsageError
from .streaming import SSE, ServerEvent, SSEDecoder

__all__ = ["AsyncStream", "Client", "RequestError", "Stream"]

_SAFETENSORS = "application/vnd.safetensors"


class RequestError(ShelfError):
    """The server answered an api call with an error status; `status` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _is_tensor(value: Any) -> bool:
    mod = type(value).__module__
    return mod.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.")


class Stream:
    """The items of one streamed answer, decoded as they arrive.

    Iterate it; `close()` (or leaving a `with` block) hangs up before the end, which stops the
    generator on the server. A failure on the server after the first item raises
    `RequestError` from the iteration.

    Example:
        >>> with client.generate_stream(prompt="The server") as tokens:
        ...     for t in tokens:
        ...         print(t["token"], end="")
    """

    def __init__(self, items: Generator[Any, None, None]) -> None:
        self._items = items

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        """Hang up: the connection closes and the server stops generating."""
        self._items.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream:
    """`Stream` for `async for`; `await stream.aclose()` (or `async with`) hangs up early."""

    def __init__(self, items: AsyncGenerator[Any, None]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        """Hang up: the connection closes and the server stops generating."""
        await self._items.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Api:
    """One api of the server: call it (sync) or `await api.acall(...)` (async); a streaming
    api's call returns a `Stream`, and `api.astream(...)` an `AsyncStream`."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.__name__ = info["name"]
        self.__doc__ = f"POST {info['path']} ({', '.join(p['name'] for p in info['params'])})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.info.get("stream"):
            return self.stream(*args, **kwargs)
        return self._client._call_sync(self.info, args, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """The same call, on the client's `httpx.AsyncClient`."""
        if self.info.get("stream"):
            raise TypeError(
                f"{self.__name__} streams its answer: iterate "
                f"`async for item in client.{self.__name__}.astream(...)`"
            )
        return await self._client._call_async(self.info, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Stream:
        """Call a streaming api; iterate the `Stream` for its items as they arrive."""
        return Stream(self._client._stream_sync(self.info, args, kwargs))

    def astream(self, *args: Any, **kwargs: Any) -> AsyncStream:
        """Call a streaming api asynchronously: `async for item in api.astream(...)`."""
        return AsyncStream(self._client._stream_async(self.info, args, kwargs))

    def __repr__(self) -> str:
        return f"<torchshelf api {self.info['name']} at {self.info['path']}>"


class Client:
    """A client for `shelf serve`, with one method per served api.

    `binary=True` (the default) sends and receives tensors as safetensors; `binary=False` uses
    JSON nested lists. The token defaults to none; pass the server's `--api-token`. When the
    server serves several models (`shelf serve a b`), `model="a"` picks the one whose apis
    this client calls; without it, an api name that several models have is an error.

    Example:
        >>> client = torchshelf.Client("http://127.0.0.1:3000")
        >>> y = client.predict(torch.randn(4, 64))            # a stored model: a tensor back
        >>> y = await client.predict.acall(torch.randn(4, 64))  # the same, async
        >>> client.apis
        ['predict']
        >>> torchshelf.Client("http://127.0.0.1:3000", model="ranker").predict(x)  # several models
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        binary: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.binary = binary
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        self._schema: dict[str, Any] | None = None

    # -- discovery ----------------------------------------------------------------------------

    @property
    def schema(self) -> dict[str, Any]:
        """The server's `/schema` (fetched once)."""
        if self._schema is None:
            self._schema = self._read(self._http().get("/schema"))
        return self._schema

    @property
    def models(self) -> list[str]:
        """The names of the served models (one for a single target)."""
        schema = self.schema
        if "models" in schema:
            return [m["name"] for m in schema["models"]]
        return [schema["name"]] if "name" in schema else []

    def _infos(self) -> list[dict[str, Any]]:
        """The apis this client calls: every api, or with `model=` that model's."""
        infos: list[dict[str, Any]] = self.schema["apis"]
        if self.model is None:
            return infos
        if self.model not in self.models:
            raise UsageError(
                f"the server does not serve a model {self.model!r}; it serves: "
                + ", ".join(self.models)
            )
        if "models" not in self.schema:
            return infos  # a single target: its apis are the model's
        return [info for info in infos if info.get("model") == self.model]

    @property
    def apis(self) -> list[str]:
        """The api names the server offers (with `model=`, that model's)."""
        return list(dict.fromkeys(a["name"] for a in self._infos()))

    def _api_info(self, name: str) -> dict[str, Any]:
        found = [info for info in self._infos() if info["name"] == name]
        if len(found) > 1:
            owners = ", ".join(str(info.get("model")) for info in found)
            raise UsageError(
                f"several served models have an api {name!r} ({owners}): pass "
                f"Client(url, model=...) to choose one"
            )
        if not found:
            raise AttributeError(f"the server has no api {name!r}; it has: {', '.join(self.apis)}")
        return found[0]

    def __getattr__(self, name: str) -> _Api:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Api(self, self._api_info(name))

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.apis))

    def call(self, api: str, *args: Any, **kwargs: Any) -> Any:
        """Call an api by name (the same as `client.<api>(...)`)."""
        return self._call_sync(self._api_info(api), args, kwargs)

    async def acall(self, api: str, *args: Any, **kwargs: Any) -> Any:
        """Call an api by name asynchronously."""
        if self._schema is None:
            self._schema = self._read(await self._ahttp().get("/schema"))
        return await self._call_async(self._api_info(api), args, kwargs)

    def stream(self, api: str, *args: Any, **kwargs: Any) -> Stream:
        """Call a streaming api by name; iterate the `Stream` for its items."""
        return Stream(self._stream_sync(self._api_info(api), args, kwargs))

    def astream(self, api: str, *args: Any, **kwargs: Any) -> AsyncStream:
        """Call a streaming api by name asynchronously: `async for item in client.astream(...)`."""

        async def items() -> AsyncGenerator[Any, None]:
            if self._schema is None:
                self._schema = self._read(await self._ahttp().get("/schema"))
            async for item in self._stream_async(self._api_info(api), args, kwargs):
                yield item

        return AsyncStream(items())

    # -- transport ----------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
        return self._sync

    def _ahttp(self) -> httpx.AsyncClient:
        if self._async is None:
            self._async = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
        return self._async

    def _call_sync(
        self, info: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        content, headers = self._encode(info, args, kwargs)
        return self._decode(info, self._http().post(info["path"], content=content, headers=headers))

    async def _call_async(
        self, info: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        content, headers = self._encode(info, args, kwargs)
        response = await self._ahttp().post(info["path"], content=content, headers=headers)
        return self._decode(info, response)

    def _stream_sync(
        self, info: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[Any, None, None]:
        content, headers = self._encode(info, args, kwargs)
        headers["Accept"] = SSE
        http = self._http()
        with http.stream("POST", info["path"], content=content, headers=headers) as response:
            if not _is_event_stream(response):
                response.read()
                yield self._decode(info, response)  # an error, or a server that did not stream
                return
            decoder = SSEDecoder()
            for chunk in response.iter_bytes():
                for event in decoder.feed(chunk):
                    yield _stream_item(info, event)

    async def _stream_async(
        self, info: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        content, headers = self._encode(info, args, kwargs)
        headers["Accept"] = SSE
        http = self._ahttp()
        async with http.stream("POST", info["path"], content=content, headers=headers) as response:
            if not _is_event_stream(response):
                await response.aread()
                yield self._decode(info, response)
                return
            decoder = SSEDecoder()
            async for chunk in response.aiter_bytes():
                for event in decoder.feed(chunk):
                    yield _stream_item(info, event)

    def _encode(
        self, info: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, dict[str, str]]:
        names = [p["name"] for p in info["params"]]
        if len(args) > len(names):
            raise TypeError(f"{info['name']}() takes {len(names)} arguments, got {len(args)}")
        values = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{info['name']}() has no parameter {k!r}; it takes {names}")
            values[k] = v
        tensors: dict[str, Any] = {}
        others: dict[str, Any] = {}
        for k, v in values.items():
            if _is_tensor(v):
                tensors[k] = v
            elif isinstance(v, (list, tuple)) and v and all(_is_tensor(t) for t in v):
                import torch

                shapes = {tuple(t.shape) for t in v}
                if len(shapes) == 1:
                    tensors[k] = torch.stack(list(v))
                else:
                    others[k] = [t.tolist() for t in v]
            elif _is_image(v):
                buf = io.BytesIO()
                v.save(buf, format="PNG")
                others[k] = base64.b64encode(buf.getvalue()).decode()
            else:
                others[k] = v
        accept = _SAFETENSORS + ", application/json" if self.binary else "application/json"
        if self.binary and tensors and not any(_is_image(v) for v in values.values()):
            from .codecs import encode_safetensors

            meta = {k: json.dumps(v) for k, v in others.items()}
            body = encode_safetensors(tensors, meta or None)
            return body, {"Content-Type": _SAFETENSORS, "Accept": accept}
        for k, t in tensors.items():
            others[k] = t.tolist()
        return json.dumps(others).encode(), {"Content-Type": "application/json", "Accept": accept}

    @staticmethod
    def _read(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text
            raise RequestError(f"HTTP {response.status_code}: {message}", response.status_code)
        return response.json()

    def _decode(self, info: dict[str, Any], response: httpx.Response) -> Any:
        if response.status_code < 400 and response.headers.get("content-type", "").startswith(
            _SAFETENSORS
        ):
            from safetensors.torch import load

            tensors = load(response.content)
            return tensors["outputs"] if set(tensors) == {"outputs"} else tensors
        data = self._read(response)
        if info.get("wraps_outputs") and isinstance(data, dict) and "outputs" in data:
            data = data["outputs"]
            return _as_tensor(data)
        if info.get("returns") == "tensor":
            return _as_tensor(data)
        return data

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync connection pool."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        """Close both connection pools."""
        self.close()
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"Client({self.url!r}, model={self.model!r})" if self.model else f"Client({self.url!r})"
        )


def _is_event_stream(response: httpx.Response) -> bool:
    return response.status_code < 400 and response.headers.get("content-type", "").startswith(SSE)


def _stream_item(info: dict[str, Any], event: ServerEvent) -> Any:
    """One decoded item of a stream, or the server's mid-stream failure raised."""
    value = json.loads(event.data)
    if event.event == "error":
        message = value.get("error", event.data) if isinstance(value, dict) else event.data
        status = value.get("status", 500) if isinstance(value, dict) else 500
        raise RequestError(f"{info['name']} failed mid-stream: {message}", int(status))
    if info.get("returns") == "tensor":
        return _as_tensor(value)
    return value


def _as_tensor(data: Any) -> Any:
    import torch

    try:
        return torch.tensor(data)
    except (TypeError, ValueError, RuntimeError):
        return data
