"""Micro-bench: sealing one message for 1,000 encrypted clients, in the Rust core vs Python.

`python -m benches.seal [--clients 1000] [--sizes 100,4096,16384] [--rounds 7]` runs the
built-in scheme's `seal_batch` in-process (no sockets), in the chunks the server uses, and
prints the median time for all recipients and per recipient for each path. Both paths give
the same bytes (tests/test_crypto.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from roomcast.crypto import EcdhClient, EcdhScheme
from roomcast.encryption.sealing import ENCRYPTED_CHUNK_BYTES, ENCRYPTED_SLICE_CLIENTS
from roomcast.protocol import encode


class _Client:
    __slots__ = ("id",)

    def __init__(self, id: str) -> None:
        self.id = id


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.seal")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sizes", default="100,4096,16384")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    scheme = EcdhScheme()
    peer = EcdhClient()
    clients = [_Client(f"c{i}") for i in range(args.clients)]
    for client in clients:
        scheme.handshake_fn(client.id, None, peer.authenticate_data("t"))
    for size in (int(s) for s in args.sizes.split(",")):
        data = {"pad": "x" * size}
        # The same chunks as roomcast.sealing.Sealer._seal_batched.
        chunk = max(
            1, min(ENCRYPTED_SLICE_CLIENTS, ENCRYPTED_CHUNK_BYTES // len(encode("e", data)))
        )
        for native in (True, False):
            scheme.native = native
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for first in range(0, len(clients), chunk):
                    scheme.seal_batch(clients[first : first + chunk], "bench", data)
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            row = {
                "scenario": "seal",
                "path": "rust" if native else "python",
                "clients": args.clients,
                "size": size,
                "median_ms": median * 1000,
                "us_per_recipient": median / args.clients * 1e6,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
