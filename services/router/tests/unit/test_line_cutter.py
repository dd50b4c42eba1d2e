"""The router's LineCutter: chunks of whole lines as byte ranges of the file, by records or
by bytes, whatever the blocks it is fed."""

from __future__ import annotations

import itertools
import random

import pytest

from mlbus.router.transform import LineCutter, Piece


def cut(cutter: LineCutter, data: bytes, block: int) -> list[Piece]:
    out: list[Piece] = []
    for start in range(0, len(data), block):
        out += cutter.feed(data[start : start + block])
    return out + cutter.finish()


def random_file(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 200)):
        roll = rng.random()
        if roll < 0.05:
            lines.append("")
        elif roll < 0.08:
            lines.append(" \t")
        elif roll < 0.1:
            lines.append(" x,1")  # starts with a space, but is a record
        else:
            lines.append(",".join(f"{rng.random():.{rng.randint(1, 6)}f}" for _ in range(3)))
    newline = "\r\n" if rng.random() < 0.2 else "\n"
    text = newline.join(lines)
    if text and rng.random() < 0.6:
        text += newline
    return text.encode()


def records_of(data: bytes, header: bool) -> list[tuple[int, bytes]]:
    """(line index after the header, line) of every record, the reference for the cutter."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if header:
        lines = lines[1:]
    return [(k, line) for k, line in enumerate(lines) if line.strip()]


@pytest.mark.parametrize("seed", range(10))
def test_chunks_cover_every_record_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        data = random_file(rng)
        header = rng.random() < 0.5
        block = rng.choice([1, 3, 64, 1 << 20])
        expected = records_of(data, header)
        per_chunk = rng.randint(1, 30)
        target = rng.randint(1, 300)
        for cutter in (
            LineCutter(per_chunk, skip_header=header),
            LineCutter(target_bytes=target, skip_header=header),
        ):
            pieces = cut(cutter, data, block)
            seen: list[tuple[int, bytes]] = []
            for piece in pieces:
                text = data[piece.offset : piece.offset + piece.length]
                lines = text.split(b"\n")
                if lines[-1] == b"":
                    lines.pop()
                found = [(piece.first + k, x) for k, x in enumerate(lines) if x.strip()]
                assert len(found) == piece.count >= 1
                seen += found
            assert seen == expected
            # Consecutive ranges: no byte between chunks is lost.
            for a, b in itertools.pairwise(pieces):
                assert a.offset + a.length == b.offset
            if cutter.records:
                assert all(p.count == per_chunk for p in pieces[:-1])
            else:
                assert all(p.length >= target for p in pieces[:-1])


def test_by_bytes_a_chunk_ends_with_the_line_that_reaches_the_target() -> None:
    data = b"h\n" + b"".join(b"%04d\n" % i for i in range(10))  # 5 bytes a line
    pieces = cut(LineCutter(target_bytes=12, skip_header=True), data, 4)
    assert [(p.first, p.count, p.offset, p.length) for p in pieces] == [
        (0, 3, 2, 15),
        (3, 3, 17, 15),
        (6, 3, 32, 15),
        (9, 1, 47, 5),
    ]
    # A last line without a line end is a record; the range ends with the file.
    pieces = cut(LineCutter(target_bytes=100), b"a\n\nb", 1)
    assert [(p.first, p.count, p.offset, p.length) for p in pieces] == [(0, 2, 0, 4)]
