"""Streaming apis (generators): framing, disconnects and the client, on a real server.

The generators talk to the test through files: a gate file the test creates to let a generator
go on, and marker files a generator's `finally` writes, so "the first event arrived before the
generator finished" and "a disconnect stopped the generator" are observed facts, not timings.
The framing and the decoders are also checked on their own, with no server.
"""

from __future__ import annotations

import asyncio
import functools
import json
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Server

import torchshelf
from torchshelf.errors import ShelfError
from torchshelf.serving.client import RequestError
from torchshelf.serving.streaming import (
    NDJSON,
    SSE,
    GeneratorStream,
    NDJSONDecoder,
    ServerEvent,
    SSEDecoder,
    is_stream_function,
    ndjson_line,
    send_stream,
    sse_event,
    stream_format,
    stream_item_hint,
)

SERVICE_SOURCE = textwrap.dedent(
    '''
    """Streaming apis for test_serve_streaming.py; they talk to the test through files."""
    import asyncio
    import time
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    import torch

    import torchshelf


    def wait_for(path: str) -> None:
        deadline = time.monotonic() + 60
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never created {path}")
            time.sleep(0.005)


    @torchshelf.service
    class Streams:
        @torchshelf.api
        def count(self, n: int) -> Iterator[dict]:
            for i in range(n):
                yield {"i": i}

        @torchshelf.api
        async def acount(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                await asyncio.sleep(0)
                yield i

        @torchshelf.api
        def gated(self, gate: str, done: str) -> Iterator[dict]:
            try:
                yield {"step": 1}
                wait_for(gate)
                yield {"step": 2}
            finally:
                Path(done).write_text("finished")

        @torchshelf.api
        async def agated(self, gate: str, done: str) -> AsyncIterator[dict]:
            try:
                yield {"step": 1}
                while not Path(gate).exists():
                    await asyncio.sleep(0.005)
                yield {"step": 2}
            finally:
                Path(done).write_text("finished")

        @torchshelf.api
        def forever(self, marker: str) -> Iterator[dict]:
            i = 0
            try:
                while True:
                    yield {"i": i}
                    i += 1
                    time.sleep(0.002)
            finally:
                Path(marker).write_text(str(i))

        @torchshelf.api
        async def aforever(self, marker: str) -> AsyncIterator[dict]:
            i = 0
            try:
                while True:
                    yield {"i": i}
                    i += 1
                    await asyncio.sleep(0.002)
            finally:
                Path(marker).write_text(str(i))

        @torchshelf.api
        def blocked(self, gate: str, marker: str) -> Iterator[dict]:
            try:
                yield {"step": 1}
                Path(marker + ".entered").touch()
                wait_for(gate)  # the client leaves while this step runs on its thread
                yield {"step": 2}
                yield {"step": 3}
            except GeneratorExit:
                Path(marker).write_text("closed")
                raise
            Path(marker).write_text("ran to the end")

        @torchshelf.api
        def fails(self, after: int) -> Iterator[int]:
            if after < 0:
                raise ValueError("after must be >= 0")
            yield from range(after)
            raise RuntimeError(f"broken after {after} items")

        @torchshelf.api
        def texts(self) -> Iterator[str]:
            yield from ["a\\nb", "c\\r\\nd", "e\\rf", "g\\u2028h\\u2029i", "j\\x0ck", "data: x", ""]

        @torchshelf.api
        def tensors(self, n: int) -> Iterator[torch.Tensor]:
            for i in range(n):
                yield torch.arange(3) * i

        @torchshelf.api
        def echo(self, text: str) -> dict:
            return {"text": text}
    '''
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("streams")
    (root / "streams.py").write_text(SERVICE_SOURCE)
    srv = Server(
        f"{root / 'streams.py'}:Streams",
        "--threads",
        "1",
        env={"TORCHSHELF_HOME": str(root)},
        log=root / "server.log",
    )
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _events(response: httpx.Response) -> Iterator[ServerEvent]:
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        yield from decoder.feed(chunk)


def _await_file(path: Path, what: str) -> str:
    """The file's text once it exists; fails after a generous deadline (not a timing check)."""
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {path.name} never appeared")
        time.sleep(0.01)
    time.sleep(0.01)  # the writer may still be writing
    return path.read_text()


# -- framing and decoding, no server ------------------------------------------------------------


def test_sse_event_puts_each_line_of_a_value_on_its_own_data_line() -> None:
    assert sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_event(b"one\ntwo\r\nthree\rfour") == (
        b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    )
    assert sse_event(b'{"error":"x"}', "error") == b'event: error\ndata: {"error":"x"}\n\n'
    assert sse_event(b"") == b"data: \n\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_sse_decoder_reassembles_events_split_at_any_byte(chunk: int) -> None:
    wire = (
        b": a comment\r\n"
        b"data: one\r\ndata: two\r\n\r\n"
        b'event: error\rdata:{"x": 1}\r\r'
        b"data: \xe2\x80\xa8 stays\n\n"  # U+2028 is no line break in SSE
        b"event: lonely\n\n"  # no data: not dispatched
        b"id: 7\ndata:  two spaces\n\n"
    )
    decoder = SSEDecoder()
    events = [e for i in range(0, len(wire), chunk) for e in decoder.feed(wire[i : i + chunk])]
    assert events == [
        ServerEvent("one\ntwo"),
        ServerEvent('{"x": 1}', "error"),
        ServerEvent("\u2028 stays"),
        ServerEvent(" two spaces", id="7"),
    ]


def test_sse_decoder_roundtrips_what_sse_event_frames() -> None:
    values = ["plain", "multi\nline\r\nvalue\r", "\u2028\u2029\x0c", "data: fake", ""]
    wire = b"".join(sse_event(v.encode()) for v in values)
    got = [e.data for e in SSEDecoder().feed(wire)]
    # SSE normalises every line break to LF; nothing else changes.
    assert got == [v.replace("\r\n", "\n").replace("\r", "\n") for v in values]


def test_ndjson_lines_and_decoder() -> None:
    assert ndjson_line(b'{"a":1}') == b'{"a":1}\n'
    with pytest.raises(ValueError, match="line break"):
        ndjson_line(b'{"a":\n1}')
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.feed(b":2}\r\n\n3") == [b'{"b":2}']
    assert decoder.flush() == [b"3"]


def test_stream_format_follows_accept() -> None:
    assert stream_format("") == SSE
    assert stream_format("text/event-stream") == SSE
    assert stream_format("application/json") == SSE
    assert stream_format("Application/X-NDJSON; q=1, */*") == NDJSON


def test_generator_functions_are_detected_through_wraps() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[str]:
        yield "x"

    @functools.wraps(gen)
    def wrapped(*a: Any, **k: Any) -> Any:
        return gen(*a, **k)

    def plain() -> list[int]:
        return [1]

    assert is_stream_function(gen) and is_stream_function(agen) and is_stream_function(wrapped)
    assert not is_stream_function(plain)
    assert stream_item_hint(gen) is int and stream_item_hint(agen) is str
    assert torchshelf.api(gen).__torchshelf_api__.stream  # type: ignore[attr-defined]
    assert not torchshelf.api(plain).__torchshelf_api__.stream  # type: ignore[attr-defined]


def test_a_streaming_api_cannot_be_batched() -> None:
    with pytest.raises(TypeError, match="cannot be batch=True"):

        @torchshelf.api(batch=True)
        def gen(items: list[int]) -> Iterator[int]:
            yield from items


class _Wire:
    """The ASGI side of one request: `receive` reports a disconnect once `leave()` is called."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def _on_error(exc: Exception) -> tuple[int, str]:
    return 500, f"{type(exc).__name__}: {exc}"


def test_send_stream_closes_a_sync_generator_only_after_its_running_step_returns() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def gen() -> Iterator[int]:
        try:
            yield 1
            entered.set()
            release.wait(30)  # the client leaves while this step runs on its thread
            yield 2
        finally:
            seen["thread"] = threading.current_thread().name

    async def run() -> Any:
        wire = _Wire()
        stream = GeneratorStream(gen())
        task = asyncio.ensure_future(
            send_stream(wire.send, wire.receive, stream, on_error=_on_error)
        )
        while not entered.is_set():
            await asyncio.sleep(0.001)
        wire.gone.set()
        await asyncio.sleep(0.05)
        assert not task.done() and "thread" not in seen  # close waits for the running step
        release.set()
        return await task, wire

    outcome, wire = asyncio.run(run())
    assert outcome.disconnected and outcome.items == 1 and outcome.status == 200
    assert outcome.metric_status == 499
    assert seen["thread"].startswith("torchshelf-stream")  # closed on the step's own thread
    assert wire.body() == b"data: 1\n\n"


def test_a_disconnect_closes_an_idle_sync_generator_at_once() -> None:
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.set()

    g = gen()

    async def run() -> Any:
        wire = _Wire()
        wire.gone.set()  # the client is gone before the first step
        return await send_stream(wire.send, wire.receive, GeneratorStream(g), on_error=_on_error)

    outcome = asyncio.run(run())
    assert outcome.disconnected
    # Closed either way: after its first step (its `finally` ran) or, when the disconnect was
    # seen before any step ran, never started (Python runs no `finally` of an unstarted one).
    assert g.gi_frame is None
    assert closed.is_set() or outcome.items == 0
    assert outcome.status in (200, 499) and outcome.metric_status == 499


def test_send_stream_answers_a_failure_before_the_first_item_with_a_plain_error() -> None:
    def gen() -> Iterator[int]:
        raise ValueError("bad input")
        yield 1

    wire = _Wire()
    outcome = asyncio.run(
        send_stream(wire.send, wire.receive, GeneratorStream(gen()), on_error=_on_error)
    )
    assert outcome.status == 500 and outcome.items == 0
    start = wire.sent[0]
    assert start["status"] == 500 and (b"content-type", b"application/json") in start["headers"]
    assert json.loads(wire.body()) == {"error": "ValueError: bad input"}


def test_send_stream_sends_an_error_frame_for_an_item_it_cannot_encode() -> None:
    async def agen() -> AsyncIterator[Any]:
        yield 1
        yield object()

    wire = _Wire()
    outcome = asyncio.run(
        send_stream(
            wire.send, wire.receive, GeneratorStream(agen()), fmt=NDJSON, on_error=_on_error
        )
    )
    assert outcome.items == 1 and outcome.error is not None
    assert outcome.status == 200 and outcome.metric_status == 500
    first, error = wire.body().splitlines()
    assert first == b"1" and json.loads(error)["status"] == 500
    assert wire.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_cancelled_stream_ends_with_an_error_frame_and_closes_the_generator() -> None:
    closed: list[bool] = []

    async def agen() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0.001)
        finally:
            closed.append(True)

    async def run() -> Any:
        wire = _Wire()
        stream = GeneratorStream(agen())
        task = asyncio.ensure_future(
            send_stream(wire.send, wire.receive, stream, on_error=_on_error)
        )
        while not wire.body():
            await asyncio.sleep(0.001)
        task.cancel()  # what uvicorn does to a request still running past the shutdown grace
        return await task, wire

    outcome, wire = asyncio.run(run())
    assert closed == [True]
    assert outcome.error_status == 503 and outcome.status == 200
    event = SSEDecoder().feed(wire.body())[-1]
    assert event.event == "error" and json.loads(event.data)["status"] == 503
    assert wire.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_protocols_without_streaming_get_a_clear_refusal(tmp_path: Path) -> None:
    from torchshelf.serving.codecs import InputError
    from torchshelf.serving.options import ServeOptions
    from torchshelf.serving.registry import ModelRegistry
    from torchshelf.serving.target import resolve_target

    (tmp_path / "streams.py").write_text(SERVICE_SOURCE)
    served = resolve_target(f"{tmp_path / 'streams.py'}:Streams")
    registry = ModelRegistry([served], ServeOptions())
    with pytest.raises(InputError, match="streams its answer") as info:
        asyncio.run(registry.infer(served.name, "count", {"n": 1}))
    assert info.value.status == 400 and "POST /count" in str(info.value)
    from torchshelf.serving.v2 import v2_models_of

    assert {m.name for m in v2_models_of(registry)} == {"echo"}  # V2 lists no stream


# -- a real server ---------------------------------------------------------------------------------


def test_items_arrive_as_sse_frames(http: httpx.Client) -> None:
    r = http.post("/count", json={"n": 3})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in r.headers  # chunked: sent as it is produced
    assert r.content == b'data: {"i":0}\n\ndata: {"i":1}\n\ndata: {"i":2}\n\n'
    assert http.post("/count", json={"n": 0}).content == b""
    # The version that computes the items, as on every inference answer (the contract).
    version = http.post("/echo", json={"text": "v"}).headers["x-model-version"]
    assert version and r.headers["x-model-version"] == version
    assert http.post("/fails", json={"after": -1}).headers["x-model-version"] == version


def test_ndjson_when_asked_for(http: httpx.Client) -> None:
    r = http.post("/acount", json={"n": 4}, headers={"Accept": NDJSON})
    assert r.status_code == 200 and r.headers["content-type"] == NDJSON
    assert r.content == b"0\n1\n2\n3\n"
    r = http.post("/count", json={"n": 2}, headers={"Accept": NDJSON})
    assert [json.loads(line) for line in r.content.splitlines()] == [{"i": 0}, {"i": 1}]


@pytest.mark.parametrize("api", ["gated", "agated"])
def test_the_first_event_arrives_before_the_generator_finishes(
    http: httpx.Client, tmp_path: Path, api: str
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    body = {"gate": str(gate), "done": str(done)}
    with http.stream("POST", f"/{api}", json=body) as r:
        events = _events(r)
        assert json.loads(next(events).data) == {"step": 1}
        # The generator is now waiting for the gate, which only this test can open.
        assert not done.exists()
        gate.touch()
        assert [json.loads(e.data) for e in events] == [{"step": 2}]
    assert done.read_text() == "finished"


@pytest.mark.parametrize("api", ["forever", "aforever"])
def test_a_client_that_disconnects_stops_the_generator(
    http: httpx.Client, tmp_path: Path, api: str
) -> None:
    marker = tmp_path / "stopped"
    with http.stream("POST", f"/{api}", json={"marker": str(marker)}) as r:
        events = _events(r)
        got = [json.loads(next(events).data)["i"] for _ in range(3)]
        assert got == [0, 1, 2]
    # Leaving the block closed the connection; the generator's finally must run.
    stopped_at = int(_await_file(marker, f"{api} kept running after the client left"))
    assert stopped_at >= 2
    assert http.post("/count", json={"n": 1}).status_code == 200  # the server is fine


def test_a_disconnect_during_a_running_step_closes_the_generator_after_it(
    http: httpx.Client, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "closed"
    with http.stream("POST", "/blocked", json={"gate": str(gate), "marker": str(marker)}) as r:
        events = _events(r)  # kept: dropping it would close the response early
        assert json.loads(next(events).data) == {"step": 1}
        _await_file(tmp_path / "closed.entered", "the second step never started")
    time.sleep(0.05)
    assert not marker.exists()  # its step is still running: a thread cannot be interrupted
    gate.touch()
    assert _await_file(marker, "the generator was not closed") == "closed"


def test_a_failure_mid_stream_sends_an_error_frame(http: httpx.Client) -> None:
    with http.stream("POST", "/fails", json={"after": 2}) as r:
        assert r.status_code == 200
        events = list(_events(r))
    assert [e.event for e in events] == ["message", "message", "error"]
    assert [json.loads(e.data) for e in events[:2]] == [0, 1]
    error = json.loads(events[2].data)
    assert "broken after 2 items" in error["error"] and error["status"] == 422

    r = http.post("/fails", json={"after": 1}, headers={"Accept": NDJSON})
    lines = [json.loads(line) for line in r.content.splitlines()]
    assert lines[0] == 0 and "broken after 1 items" in lines[1]["error"]


def test_a_failure_before_the_first_item_is_a_plain_error_response(http: httpx.Client) -> None:
    r = http.post("/fails", json={"after": -1})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    assert "after must be >= 0" in r.json()["error"]
    r = http.post("/fails", json={})
    assert r.status_code == 422 and "after" in r.json()["error"]


def test_values_with_line_breaks_survive_both_framings(http: httpx.Client) -> None:
    sent = ["a\nb", "c\r\nd", "e\rf", "g\u2028h\u2029i", "j\x0ck", "data: x", ""]
    r = http.post("/texts", json={})
    raw_lines = [line for line in r.content.split(b"\n") if line]
    assert all(line.startswith(b"data: ") for line in raw_lines), raw_lines
    assert [json.loads(e.data) for e in SSEDecoder().feed(r.content)] == sent
    r = http.post("/texts", json={}, headers={"Accept": NDJSON})
    assert [json.loads(line) for line in r.content.split(b"\n")[:-1]] == sent


def test_non_streaming_apis_are_unaffected(http: httpx.Client) -> None:
    r = http.post("/echo", json={"text": "hi"})
    assert r.status_code == 200 and r.json() == {"text": "hi"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    r = http.post("/echo", json={"text": "hi"}, headers={"Accept": NDJSON})
    assert r.json() == {"text": "hi"}


def test_openapi_and_schema_describe_streams(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    ok = doc["paths"]["/count"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {SSE, NDJSON}
    assert ok[SSE]["x-item-schema"] == {"type": "object"}
    assert doc["paths"]["/acount"]["post"]["responses"]["200"]["content"][NDJSON][
        "x-item-schema"
    ] == {"type": "integer"}
    assert doc["paths"]["/count"]["post"]["x-torchshelf"]["stream"] is True
    assert set(doc["paths"]["/echo"]["post"]["responses"]["200"]["content"]) == {"application/json"}
    apis = {a["name"]: a for a in http.get("/schema").json()["apis"]}
    assert apis["count"]["stream"] and apis["tensors"]["returns"] == "tensor"
    assert not apis["echo"]["stream"]


def test_client_iterates_a_stream(server: Server, tmp_path: Path) -> None:
    import torch

    with torchshelf.Client(server.url) as client:
        assert list(client.count(n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert list(client.stream("acount", 3)) == [0, 1, 2]
        tensors = list(client.tensors(n=3))
        assert all(isinstance(t, torch.Tensor) for t in tensors)
        assert torch.equal(tensors[2], torch.tensor([0, 2, 4]))
        assert client.echo(text="x") == {"text": "x"}  # plain apis still answer values

        stream = client.fails(after=2)
        assert [next(stream), next(stream)] == [0, 1]
        with pytest.raises(RequestError, match="broken after 2") as info:
            next(stream)
        assert info.value.status == 422 and isinstance(info.value, ShelfError)
        with pytest.raises(RequestError, match="after must be") as info:
            list(client.fails(after=-1))
        assert info.value.status == 422

        marker = tmp_path / "stopped"
        with client.forever(marker=str(marker)) as items:
            assert next(items) == {"i": 0}
        _await_file(marker, "closing the client's stream did not stop the generator")


def test_client_iterates_a_stream_async(server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        async with torchshelf.Client(server.url) as client:
            by_name = [x async for x in client.astream("count", n=2)]
            api = client.acount  # reads /schema (sync) once
            items = [x async for x in api.astream(n=4)]
            async with client.aforever.astream(marker=str(marker)) as stream:
                first = [await stream.__anext__(), await stream.__anext__()]
            with pytest.raises(TypeError, match="astream"):
                await client.acount.acall(n=1)
            return by_name, items, first

    by_name, items, first = asyncio.run(run())
    assert by_name == [{"i": 0}, {"i": 1}]
    assert items == [0, 1, 2, 3]
    assert first == [{"i": 0}, {"i": 1}]
    _await_file(marker, "closing the async stream did not stop the generator")


def test_streams_of_several_served_targets(tmp_path: Path) -> None:
    (tmp_path / "streams.py").write_text(SERVICE_SOURCE)
    (tmp_path / "letters.py").write_text(
        textwrap.dedent(
            """
            from collections.abc import Iterator

            import torchshelf


            @torchshelf.service
            class Letters:
                @torchshelf.api
                def spell(self, word: str) -> Iterator[str]:
                    yield from word
            """
        )
    )
    srv = Server(
        f"{tmp_path / 'streams.py'}:Streams",
        f"{tmp_path / 'letters.py'}:Letters",
        "--threads",
        "1",
        env={"TORCHSHELF_HOME": str(tmp_path)},
        log=tmp_path / "server.log",
    )
    try:
        r = httpx.post(srv.url + "/models/Letters/spell", json={"word": "abc"}, timeout=30)
        assert r.headers["content-type"].startswith(SSE) and r.headers["x-model-version"]
        assert r.content == b'data: "a"\n\ndata: "b"\n\ndata: "c"\n\n'
        with torchshelf.Client(srv.url) as client:
            assert list(client.spell(word="xy")) == ["x", "y"]
            assert list(client.count(n=2)) == [{"i": 0}, {"i": 1}]
    finally:
        srv.stop()
