"""oci.k8s_log_tail: Podman's k8s-file log read from its end, bounded (pure file I/O)."""

from __future__ import annotations

from pathlib import Path

from pytest_containersec.runtimes.oci import oci

TS = "2026-11-29T02:40:57.082448198+00:00"


def write(path: Path, records: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(f"{TS} {stream} {tag} {text}\n" for stream, tag, text in records))
    return path


def test_partial_records_join_into_lines(tmp_path: Path) -> None:
    log = write(tmp_path / "ctr.log", [("stdout", "P", "ab"), ("stdout", "P", "cd"),
                                       ("stdout", "F", "ef"), ("stderr", "F", "oops"),
                                       ("stdout", "F", "")])  # fmt: skip
    assert oci.k8s_log_tail(log, 200) == "abcdef\noops\n\n"
    assert oci.k8s_log_tail(log, 2) == "oops\n\n"
    assert oci.k8s_log_tail(log, 0) == ""


def test_only_the_end_is_read(tmp_path: Path) -> None:
    records = [("stdout", "P", "x" * 1000)] * 1000 + [("stdout", "F", ""), ("stdout", "F", "done")]
    log = write(tmp_path / "ctr.log", records)
    out = oci.k8s_log_tail(log, 200, limit=10_000)
    assert out.endswith("\ndone\n")
    assert len(out) < 10_000  # the record the seek cut is dropped, not misparsed
    assert set(out[:-6]) == {"x"}


def test_text_with_spaces_and_bad_utf8(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_bytes(f"{TS} stdout F a b  c\n{TS} stdout F \xff\n".encode("latin-1"))
    assert oci.k8s_log_tail(log, 10) == "a b  c\n\ufffd\n"
