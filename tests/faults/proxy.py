"""A small TCP proxy between one component and nats-server, for link faults (`tc netem` is not
available here): added latency, a blackhole (bytes held, as a partition does before TCP gives
up) and a reset (every connection aborted with RST). It runs its own event loop in a thread, so
the load generator's loop and the proxied traffic do not slow each other."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

from runtime.nats_server import free_port


class LinkProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0
        self.blackhole = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> LinkProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer),
                             return_exceptions=True)
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each chunk is held `delay_s` after it was read (latency, not a throughput cap: a
        second task writes chunks when due), and not at all while blackholed."""
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def write_when_due() -> None:
            while True:
                at, data = await due.get()
                while self.blackhole or time.monotonic() < at:
                    await asyncio.sleep(0.002)
                writer.write(data)
                await writer.drain()

        writing = asyncio.create_task(write_when_due())
        try:
            while data := await reader.read(65536):
                await due.put((time.monotonic() + self.delay_s, data))
        finally:
            while not due.empty() and not writing.done():
                await asyncio.sleep(0.005)
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
            writer.close()

    def reset(self) -> None:
        """Abort every proxied connection with a TCP RST (SO_LINGER 0), both directions."""
        def abort_all() -> None:
            for writer in list(self._writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            self._writers.clear()
        self._loop.call_soon_threadsafe(abort_all)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()  # its self-pipe sockets too, or they warn when collected later
