"""`torchshelf.Client`: call a `shelf serve` server from Python, tensors in and tensors out.

The client reads the server's `/schema` once and then offers one method per api
(`client.predict(x)`, `await client.predict.acall(x)`). Tensors travel as safetensors bodies
(no float formatting or parsing on either side); other values go as JSON.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx

from ..errors import ShelfError

__all__ = ["Client", "RequestError"]

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


class _Api:
    """One api of the server: call it (sync) or `await api.acall(...)` (async)."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.__name__ = info["name"]
        self.__doc__ = f"POST {info['path']} ({', '.join(p['name'] for p in info['params'])})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client._call_sync(self.info, args, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """The same call, on the client's `httpx.AsyncClient`."""
        return await self._client._call_async(self.info, args, kwargs)

    def __repr__(self) -> str:
        return f"<torchshelf api {self.info['name']} at {self.info['path']}>"


class Client:
    """A client for `shelf serve`, with one method per served api.

    `binary=True` (the default) sends and receives tensors as safetensors; `binary=False` uses
    JSON nested lists. The token defaults to none; pass the server's `--api-token`.

    Example:
        >>> client = torchshelf.Client("http://127.0.0.1:3000")
        >>> y = client.predict(torch.randn(4, 64))            # a stored model: a tensor back
        >>> y = await client.predict.acall(torch.randn(4, 64))  # the same, async
        >>> client.apis
        ['predict']
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        binary: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
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
    def apis(self) -> list[str]:
        """The api names the server offers."""
        return [a["name"] for a in self.schema["apis"]]

    def _api_info(self, name: str) -> dict[str, Any]:
        for info in self.schema["apis"]:
            if info["name"] == name:
                return info
        raise AttributeError(f"the server has no api {name!r}; it has: {', '.join(self.apis)}")

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
        return f"Client({self.url!r})"


def _as_tensor(data: Any) -> Any:
    import torch

    try:
        return torch.tensor(data)
    except (TypeError, ValueError, RuntimeError):
        return data
