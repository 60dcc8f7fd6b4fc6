"""The pooled client to pods (and, in the invoker, to the gateway's Service): a kept-alive
connection that fails takes its idle siblings with it, so a peer killed outright costs one
timeout, not one per pooled connection."""

from __future__ import annotations

import asyncio

from kubelambda.gateway.upstream import (
    NotDelivered,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


class Peer:
    """Answers every request, slowly enough for three to be in flight at once; once
    ``silent``, answers nothing while keeping its connections open (a blackholed peer)."""

    def __init__(self) -> None:
        self.silent = False
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if not self.silent:
                    writer.write(OK)
                    await writer.drain()
                    await asyncio.sleep(0.05)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.05)


async def dead_connections_scenario() -> tuple[int, int, bool, int]:
    peer = Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    address = ("127.0.0.1", server.sockets[0].getsockname()[1])
    pool = UpstreamPool()
    await asyncio.gather(*(pool.request(address, HEAD, b"", 5) for _ in range(3)))
    idle_before = peer.connections
    peer.silent = True
    timed_out = False
    try:
        await pool.request(address, HEAD, b"", 0.2)
    except UpstreamTimeout:
        timed_out = True
    peer.silent = False
    reply = await pool.request(address, HEAD, b"", 5)
    pool.close()
    await peer.close()
    server.close()
    await server.wait_closed()
    return idle_before, reply.status, timed_out, peer.connections


def test_a_dead_kept_alive_connection_drops_its_idle_siblings() -> None:
    idle_before, status, timed_out, connections = asyncio.run(dead_connections_scenario())
    assert idle_before == 3
    assert timed_out
    assert status == 200
    # The request after the timeout opened a fresh connection instead of trying the two
    # idle ones left.
    assert connections == 4


async def try_send_scenario() -> tuple[bool, list[object], list[object], int]:
    """try_send: nothing without an idle connection; on one, the answer through the callback;
    a connection lost before the request went out: NotDelivered, and its siblings dropped."""
    peer = Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    address = ("127.0.0.1", server.sockets[0].getsockname()[1])
    pool = UpstreamPool()
    sent_without_idle = pool.try_send(address, HEAD, b"", 5, lambda reply: None)
    await asyncio.gather(*(pool.request(address, HEAD, b"", 5) for _ in range(2)))
    answered: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    assert pool.try_send(address, HEAD, b"", 5, answered.set_result)
    first = [await answered]
    lost: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    chosen = pool._idle[address][-1]  # the idle connection try_send takes next
    assert pool.try_send(address, HEAD, b"", 5, lost.set_result)
    chosen.close()  # closing before the loop's next pass sends the request
    second = [await lost]
    connections_before = peer.connections
    reply = await pool.request(address, HEAD, b"", 5)  # a fresh connection, not an idle one
    pool.close()
    await peer.close()
    server.close()
    await server.wait_closed()
    return sent_without_idle, first, [*second, reply.status], peer.connections - connections_before


def test_try_send_answers_through_the_callback() -> None:
    sent_without_idle, first, second, fresh = asyncio.run(try_send_scenario())
    assert not sent_without_idle
    assert isinstance(first[0], UpstreamResponse)
    assert first[0].status == 200
    assert isinstance(second[0], NotDelivered), second
    assert second[1] == 200
    assert fresh == 1
