"""Helpers of the plain S3 suite: error assertions and checksum functions boto3 cannot compute
without awscrt (CRC32C, CRC64NVME)."""

from __future__ import annotations

import base64
import struct

import pytest
from botocore.exceptions import ClientError

MiB = 1024 * 1024


def expect_error(status: int, code: str | None, fn, **kw) -> ClientError:
    with pytest.raises(ClientError) as ei:
        fn(**kw)
    e = ei.value
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == status, e.response
    if code is not None:
        assert e.response["Error"]["Code"] == code, e.response
    return e


def _table(poly: int, bits: int) -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        out.append(c & ((1 << bits) - 1))
    return out


_C32C = _table(0x82F63B78, 32)
_C64 = _table(0x9A6C9329AC4BC9B5, 64)


def crc32c(data: bytes) -> bytes:
    c = 0xFFFFFFFF
    for b in data:
        c = _C32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return struct.pack(">I", c ^ 0xFFFFFFFF)


def crc64nvme(data: bytes) -> bytes:
    m = (1 << 64) - 1
    c = m
    for b in data:
        c = _C64[(c ^ b) & 0xFF] ^ (c >> 8)
    return struct.pack(">Q", c ^ m)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


assert crc32c(b"123456789").hex() == "e3069283"
assert crc64nvme(b"123456789").hex() == "ae8b14860a799888"
