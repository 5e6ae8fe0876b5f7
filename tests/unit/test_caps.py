"""Capability bit decoding: every kernel bit by name, future bits kept as CAP_<n>."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.errors import ProbeParseError
from pytest_containersec.linux import caps

# The kernel's numbering (include/uapi/linux/capability.h), written out independently of
# caps.CAP_NAMES so a shifted or misspelt entry there fails here.
KERNEL_BITS = {
    0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 2: "CAP_DAC_READ_SEARCH", 3: "CAP_FOWNER",
    4: "CAP_FSETID", 5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 8: "CAP_SETPCAP",
    9: "CAP_LINUX_IMMUTABLE", 10: "CAP_NET_BIND_SERVICE", 11: "CAP_NET_BROADCAST",
    12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW", 14: "CAP_IPC_LOCK", 15: "CAP_IPC_OWNER",
    16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO", 18: "CAP_SYS_CHROOT", 19: "CAP_SYS_PTRACE",
    20: "CAP_SYS_PACCT", 21: "CAP_SYS_ADMIN", 22: "CAP_SYS_BOOT", 23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE", 25: "CAP_SYS_TIME", 26: "CAP_SYS_TTY_CONFIG", 27: "CAP_MKNOD",
    28: "CAP_LEASE", 29: "CAP_AUDIT_WRITE", 30: "CAP_AUDIT_CONTROL", 31: "CAP_SETFCAP",
    32: "CAP_MAC_OVERRIDE", 33: "CAP_MAC_ADMIN", 34: "CAP_SYSLOG", 35: "CAP_WAKE_ALARM",
    36: "CAP_BLOCK_SUSPEND", 37: "CAP_AUDIT_READ", 38: "CAP_PERFMON", 39: "CAP_BPF",
    40: "CAP_CHECKPOINT_RESTORE",
}  # fmt: skip


@pytest.mark.parametrize("bit", range(41))
def test_every_known_bit_decodes_to_its_name(bit: int) -> None:
    assert caps.decode_mask(f"{1 << bit:016x}") == (KERNEL_BITS[bit],)
    assert caps.bit_name(bit) == KERNEL_BITS[bit]


@pytest.mark.parametrize("bit", range(41, 64))
def test_unknown_bits_are_kept_as_numbers(bit: int) -> None:
    assert caps.decode_mask(f"{1 << bit:x}") == (f"CAP_{bit}",)


def test_full_mask_has_64_entries() -> None:
    names = caps.decode_mask("ffffffffffffffff")
    assert len(names) == 64
    assert names == tuple(sorted(names))
    assert set(KERNEL_BITS.values()) <= set(names)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ("0000000000000000", ()),
        # docker's default set, as recorded in tests/data/proc/docker-default/status
        ("00000000a80425fb", tuple(sorted(caps.DOCKER_DEFAULT_CAPS))),
        ("00000000000000c0", ("CAP_SETGID", "CAP_SETUID")),
        ("000001ffffffffff", tuple(sorted(KERNEL_BITS.values()))),
    ],
)
def test_decode_examples(mask: str, expected: tuple[str, ...]) -> None:
    assert caps.decode_mask(mask) == expected


@pytest.mark.parametrize("mask", ["", "  ", "xyz", "0x10", "1" * 17, "-1", "12 34", "١٢"])
def test_decode_rejects_non_masks(mask: str) -> None:
    with pytest.raises(ProbeParseError):
        caps.decode_mask(mask)


@given(st.integers(min_value=0, max_value=2**64 - 1))
@settings(max_examples=200, deadline=None)
def test_encode_inverts_decode(value: int) -> None:
    names = caps.decode_mask(f"{value:016x}")
    assert caps.encode(names) == value
    assert len(names) == value.bit_count()


@given(st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_decode_random_text_never_crashes(text: str) -> None:
    try:
        names = caps.decode_mask(text)
    except ProbeParseError:
        return
    assert caps.encode(names) == int(text.strip(), 16)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("sys_admin", "CAP_SYS_ADMIN"), ("CAP_NET_RAW", "CAP_NET_RAW"), ("all", "ALL"),
     ("CAP_45", "CAP_45")],
)  # fmt: skip
def test_normalize(name: str, expected: str) -> None:
    assert caps.normalize(name) == expected


def test_normalize_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown capability"):
        caps.normalize("CAP_MAKE_COFFEE")
