"""direct-tcpip to a server that speaks first (SMTP, MySQL, SSH greet on connect): the greeting
and the server's EOF must reach the client, even when they arrive before the channel is open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.sidecar.harness import ClientKey, running_sidecar

pytestmark = pytest.mark.timeout(60)

GREETING = b"220 cluster-service ESMTP ready\r\n"


async def _greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    await writer.drain()
    writer.close()


def test_a_server_greeting_reaches_the_client(tmp_path: Path, key: ClientKey) -> None:
    with running_sidecar(tmp_path, key) as sidecar:

        async def scenario() -> list[bytes]:
            server = await asyncio.start_server(_greet_and_close, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            got = []
            async with await sidecar.connect(key) as conn:
                for _ in range(20):  # the race is per connection; try a bounded few
                    reader, writer = await conn.open_connection("127.0.0.1", port)
                    got.append(await asyncio.wait_for(reader.read(), 10))
                    writer.close()
            server.close()
            return got

        assert asyncio.run(scenario()) == [GREETING] * 20
