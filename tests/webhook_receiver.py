"""A real HTTP/1.1 receiver for webhook tests: a socket server in the test's loop that
answers each POST as the test's ``behave`` says: 200, 500, 429 with Retry-After, a 302, no
answer at all (the sender's timeout), or a connection reset (RST, SO_LINGER 0)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson

Behaviour = Literal["ok", "error", "throttle", "hang", "reset", "redirect"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: Behaviour
    at: float  # time.time() when read

    @property
    def items(self) -> list[dict[str, object]]:
        data: list[dict[str, object]] = orjson.loads(self.body)["data"]
        return data


@dataclass
class Receiver:
    behave: Callable[[str], Behaviour] = lambda path: "ok"
    got: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    port: int = 0
    _server: asyncio.Server | None = None
    _hanging: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        for writer in self._hanging:
            writer.close()
        if self._server is not None:
            self._server.close()

    def delivered(self, path: str) -> list[Received]:
        """The requests to ``path`` answered 200."""
        return [r for r in self.got[path] if r.answered == "ok"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                behaviour = self.behave(path)
                self.got[path].append(Received(path, headers, body, behaviour, time.time()))
                if behaviour == "hang":
                    self._hanging.append(writer)
                    await reader.read()  # until the sender gives up and closes
                    return
                if behaviour == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                status, extra = {
                    "ok": ("200 OK", ""),
                    "error": ("500 Internal Server Error", ""),
                    "throttle": ("429 Too Many Requests", "Retry-After: 1\r\n"),
                    "redirect": ("302 Found", "Location: http://169.254.169.254/latest/meta-data/\r\n"),
                }[behaviour]
                text = b"nope" if behaviour != "ok" else b""
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(text)}\r\n{extra}\r\n".encode() + text)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
