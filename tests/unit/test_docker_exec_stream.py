"""The docker adapter reads an exec's multiplexed output through the HTTP response's own
buffered reader: what that reader took in with the ``101`` headers is the first frames.

docker-py's ``exec_start`` reads the raw socket beneath it (docker-py#3332): against a
daemon that sends the headers and the first frames at once, the first frames are lost.
That is what "missing the CSPROBE1 BEGIN header" was, under load."""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from docker.utils.socket import frames_iter

from pytest_containersec.runtimes.docker.docker import exec_stream, read_frames

HEADERS = (
    b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(data)) + data


BODY = frame(1, b"CSPROBE1 BEGIN\n") + frame(2, b"a warning\n") + frame(1, b"CSPROBE1 END\n")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    """A daemon that answers every request with the headers and the whole stream in one
    write, then closes: the worst case for a client that reads the raw socket."""
    path = str(tmp_path / "d.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(HEADERS + BODY)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"unix://{path}"
    srv.close()


def test_every_frame_arrives_even_when_sent_with_the_headers(daemon: str) -> None:
    api = docker.APIClient(base_url=daemon, version="1.41", timeout=10)
    chunks = list(exec_stream(api, "x"))
    api.close()
    out = b"".join(o for o, _ in chunks if o)
    err = b"".join(e for _, e in chunks if e)
    assert out == b"CSPROBE1 BEGIN\nCSPROBE1 END\n"
    assert err == b"a warning\n"


def test_docker_py_itself_loses_them_here(daemon: str) -> None:
    """The reason for exec_stream: the SDK's own call on the same daemon."""
    api = docker.APIClient(base_url=daemon, version="1.41", timeout=10)
    sock = api.exec_start("x", socket=True)  # the raw socket exec_start(stream=True) reads
    try:
        frames = frames_iter(sock, tty=False)  # type: ignore[no-untyped-call]
        got = b"".join(data for kind, data in frames if kind == 1)
    finally:
        cast(Any, sock)._response.close()  # what holds the connection (docker-py#3282)
        sock.close()
        api.close()
    assert got != b"CSPROBE1 BEGIN\nCSPROBE1 END\n"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"", []),
        (
            frame(1, b"a") + frame(2, b"b") + frame(3, b"c"),
            [(b"a", None), (None, b"b"), (None, b"c")],
        ),
        (frame(1, b"") + frame(1, b"x"), [(b"", None), (b"x", None)]),
        (frame(0, b"stdin?") + frame(1, b"x"), [(b"x", None)]),
        (frame(1, b"abc")[:-1], [(b"ab", None)]),  # cut short: what came, then the end
        (frame(1, b"a") + b"\x01\x00", [(b"a", None)]),  # half a header: the end
    ],
)
def test_read_frames(raw: bytes, want: list[tuple[bytes | None, bytes | None]]) -> None:
    assert list(read_frames(io.BufferedReader(io.BytesIO(raw)))) == want
