"""A local S3 server (moto's, on 127.0.0.1) holding a public-read copy of the demo data: what the
tests and benchmarks/s3.py stream from, and a way to try `data=cellmap_s3` without a bucket.
Needs the test extra (moto[server]). `Relay` stands between a client and the server: it adds a
delay to each request (a distant bucket) or cuts the connection (an outage).

    with demo_bucket(Path("/tmp/s3")) as (url, log):   # then AWS_ENDPOINT_URL=url
        ... paths.s3_dir=s3://cellmap-demo ...; requests_in(log.read_text().splitlines())
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEMO_BUCKET = "cellmap-demo"
CREDENTIALS = {"key": "testing", "secret": "testing"}  # moto accepts any; s3fs needs some to upload


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """`python -m moto.server` on a free port, logging one line per request to `log`; (process, URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with log.open("w") as out:  # the server keeps its own handle
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return server, url
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"moto server did not start on {url} (its log: {log})")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=10)


def upload_demo(url: str, demo_root: Path, bucket: str = DEMO_BUCKET) -> str:
    """Copy the demo datasets (`demo_root` = <cache>/v<N>) to a public-read bucket; its s3:// URL."""
    import s3fs

    fs = s3fs.S3FileSystem(**CREDENTIALS, client_kwargs={"endpoint_url": url},
                           s3_additional_kwargs={"ACL": "public-read"}, skip_instance_cache=True)
    fs.mkdir(bucket, acl="public-read")
    files = sorted(path for path in demo_root.rglob("*") if path.is_file())  # each public-read, for anonymous readers
    fs.put([str(path) for path in files], [f"{bucket}/{path.relative_to(demo_root).as_posix()}" for path in files])
    return f"s3://{bucket}"


@contextmanager
def demo_bucket(folder: Path, demo_cache: Path | None = None) -> Iterator[tuple[str, Path]]:
    """A server holding the demo data of `demo_cache` (default `folder`/demo; made there if
    missing), its log in `folder`; (URL, log)."""
    from cellmap_train.data.demo import ensure_demo_data

    root = ensure_demo_data(demo_cache or folder / "demo")
    server, url = start_server(folder / "moto.log")
    try:
        upload_demo(url, root)
        yield url, folder / "moto.log"
    finally:
        stop_server(server)


def requests_in(log_lines: list[str]) -> list[tuple[str, str]]:
    """(method, /bucket/key) of each request in the server's log lines."""
    plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in log_lines)  # 4xx answers are logged in colour
    return [match.groups() for line in plain if (match := re.search(r'"([A-Z]+) (\S+) HTTP/', line))]


def settled_lines(log: Path, polls: int = 20) -> list[str]:
    """The log's lines once no new one has come for 0.1 s: the server logs a request after answering it."""
    lines = log.read_text().splitlines()
    for _ in range(polls):
        time.sleep(0.1)
        if len(latest := log.read_text().splitlines()) == len(lines):
            break
        lines = latest
    return lines


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a vanished peer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Relay:
    """127.0.0.1:<port> forwarding to the server at `target_url`, each request `delay` seconds late
    (a bucket far away: a request costs a round trip there). `cut()` drops every open connection
    and then resets each new one (the server is gone; `refused` counts how often a client came
    back); `restore()` forwards again on the same port. The server itself is never touched."""

    def __init__(self, target_url: str, delay: float = 0.0):
        host, _, port = target_url.split("://", 1)[1].partition(":")
        self.target, self.delay = (host, int(port)), delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = True
        self.refused = 0  # connections reset while cut
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self.up = False
            for sock in self._open:
                _reset(sock)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if not self.up:
                    self.refused += 1
                    _reset(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                upstream.settimeout(None)
                self._open.update((client, upstream))
            for src, dst, delay in ((client, upstream, self.delay), (upstream, client, 0.0)):
                threading.Thread(target=self._pump, args=(src, dst, delay), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay)  # HTTP/1.1 sends a connection's requests one after another
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # cut, or the other side closed


def main(argv: list[str] | None = None) -> None:
    """`python -m cellmap_train.data.local_s3`: serve the demo data until Ctrl-C and say how to train on it."""
    import argparse
    import signal
    import tempfile

    parser = argparse.ArgumentParser(description="Serve the demo data from a local S3 server (moto) until Ctrl-C.")
    parser.add_argument("--delay-ms", type=float, default=0, help="hold each request back this long (a distant bucket)")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starts background jobs with it ignored
        signal.signal(sig, signal.default_int_handler)  # stop, and clean up, as on Ctrl-C
    demo_cache = Path(os.environ.get("CELLMAP_TRAIN_DEMO_DIR", Path.home() / ".cache/cellmap_train/demo"))  # as conf/paths
    try:
        with tempfile.TemporaryDirectory(prefix="cellmap-s3-") as folder, demo_bucket(Path(folder), demo_cache) as (url, _):
            endpoint = Relay(url, delay=args.delay_ms / 1000).url if args.delay_ms else url
            print(f"serving s3://{DEMO_BUCKET} at {endpoint}; train on it with:\n"
                  f"  AWS_ENDPOINT_URL={endpoint} python -m cellmap_train experiment=demo data=cellmap_s3 "
                  f"paths.s3_dir=s3://{DEMO_BUCKET}\nCtrl-C stops the server.", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        print("server stopped", flush=True)


if __name__ == "__main__":
    main()
