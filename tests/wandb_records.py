"""Read an offline W&B run's transaction log (`run-<id>.wandb`) into its protobuf records, as `wandb sync` sends them.

wandb 0.31 reads these files in its Go core only (the Python `DataStore` is gone), so this follows the format the
core writes: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log chunks in 32 KiB blocks, each
chunk `<crc32 u32, length u16, type u8>` (1 full, 2 first, 3 middle, 4 last) and a block's tail under 7 bytes
zero-padded. The payload is `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, CHUNK_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B transaction log"
    records, pending, index = [], b"", 7
    while index + CHUNK_HEADER <= len(data):
        if BLOCK - index % BLOCK < CHUNK_HEADER:  # padding at a block's end
            index += BLOCK - index % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[index:index + CHUNK_HEADER])
        chunk = data[index + CHUNK_HEADER:index + CHUNK_HEADER + length]
        index += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def offline_run(wandb_dir: Path) -> tuple[Path, list[pb.Record]]:
    """The one offline run under a `wandb/` folder: its files folder and its records."""
    runs = sorted(wandb_dir.glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"expected one offline run in {wandb_dir}, found {runs}"
    return runs[0].parent / "files", read_records(runs[0])
