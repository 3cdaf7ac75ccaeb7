"""An HTTP load generator for the server API: `python -m benches.apiload PORT KEY PATH BODY
REQUESTS CONNECTIONS WINDOW` sends REQUESTS copies of the JSON file BODY to PATH over
CONNECTIONS keep-alive connections, WINDOW requests in flight on each (pipelined), and
prints one JSON line: requests answered, how many were not 200, seconds, and its own CPU
seconds."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

_OK = b"HTTP/1.1 200 "


def _content_length(head: bytes) -> int:
    start = head.find(b"Content-Length: ")
    if start < 0:
        return 0
    start += len(b"Content-Length: ")
    end = head.find(b"\r\n", start)
    return int(head[start:] if end < 0 else head[start:end])


async def connection(port: int, request: bytes, count: int, window: int) -> tuple[int, int]:
    """Send `count` requests, at most `window` unanswered; (answered, not 200)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = failed = sent = 0
    buffer = b""
    try:
        while answered < count:
            burst = min(window - (sent - answered), count - sent)
            if burst > 0:
                writer.write(request * burst)
                sent += burst
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
            # Each answer: a head, then Content-Length bytes of body.
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buffer[:end]
                length = _content_length(head)
                if len(buffer) < end + 4 + length:
                    break
                if not head.startswith(_OK):
                    failed += 1
                buffer = buffer[end + 4 + length :]
                answered += 1
    finally:
        writer.close()
    return answered, failed


async def main() -> None:
    port, key, path, body_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    requests, connections, window = (int(x) for x in sys.argv[5:8])
    with open(body_file, "rb") as file:
        body = file.read()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    shares = [requests // connections] * connections
    shares[0] += requests - sum(shares)
    cpu0, start = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(connection(port, request, n, window) for n in shares))
    seconds = time.perf_counter() - start
    report = {
        "answered": sum(a for a, _ in results),
        "failed": sum(f for _, f in results),
        "seconds": seconds,
        "cpu": time.process_time() - cpu0,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
