"""Tar shards in: brace / glob patterns, streaming samples, and every kind of damage as a TarProblem."""

from __future__ import annotations

import io
import os
import random
import tarfile
import threading
import time

import pytest

from vggfeat.data.tar_shards import (
    TarProblem,
    TarSample,
    expand_shard_patterns,
    iter_tar_samples,
    split_key,
    write_tar_shard,
)
from vggfeat.errors import InputError


def _samples(n: int, size: int = 300) -> list[tuple[str, dict[str, bytes]]]:
    rng = random.Random(n)
    return [
        (f"s{i:04d}", {"jpg": rng.randbytes(size), "cls": str(i % 3).encode(), "json": b'{"i": %d}' % i})
        for i in range(n)
    ]


def _run(fn, seconds: float = 10.0):
    """fn() in a thread, failing the test (instead of hanging it) when it does not finish in time."""
    out: list = []

    def target() -> None:
        try:
            out.append((True, fn()))
        except Exception as e:  # handed to the test's thread
            out.append((False, e))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


def test_round_trip(tmp_path):
    samples = _samples(5)
    write_tar_shard(tmp_path / "a.tar", samples)
    got = list(iter_tar_samples(str(tmp_path / "a.tar")))
    assert [s.key for s in got] == [k for k, _ in samples]
    for s, (key, members) in zip(got, samples, strict=True):
        assert isinstance(s, TarSample) and s.url == str(tmp_path / "a.tar")
        assert s.image_member == f"{key}.jpg" and s.data == members["jpg"]
        assert s.extras == {"cls": members["cls"], "json": members["json"]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]  # no temporary file left behind


def test_webdataset_keys_and_extensions(tmp_path):
    assert split_key("a/b.c/x.seg.PNG") == ("a/b.c/x", "seg.png")
    assert split_key("noext") is None
    with tarfile.open(tmp_path / "w.tar", "w") as tf:
        for name in ["d/x.JPEG", "d/x.cls", "d/y.png", "d/y.seg.png"]:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    got = list(iter_tar_samples(tmp_path / "w.tar"))
    assert [(s.key, s.image_member, sorted(s.extras)) for s in got] == [
        ("d/x", "d/x.JPEG", ["cls"]),
        ("d/y", "d/y.png", ["seg.png"]),
    ]


def test_bad_samples_are_problems_and_reading_goes_on(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tf:

        def add(name: str, data: bytes = b"x", **attrs) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data))

        add("a.cls")  # no image
        add("b.jpg"), add("b.png")  # two images
        link = tarfile.TarInfo("c.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)  # a symlink, never followed
        add("d.jpg", b"y" * 5000)  # over the limit below
        add("e.jpg"), add("e.jpg")  # one name twice
        add("README")  # no extension
        add("f.jpg", b"fine")
    got = list(iter_tar_samples(path, max_member_bytes=4096))
    assert [type(g).__name__ for g in got] == ["TarProblem"] * 6 + ["TarSample"]
    reasons = {g.key: g.reason for g in got[:-1]}
    assert "no image member" in reasons["a"] and "two image members" in reasons["b"]
    assert "link" in reasons["c"] and "4096" in reasons["d"] and "two members named e.jpg" in reasons["e"]
    assert "no extension" in reasons["README"]
    assert got[-1].data == b"fine"


def _cut(tmp_path, n_bytes: int):
    path = tmp_path / "t.tar"
    write_tar_shard(path, _samples(4, size=1000))
    data = path.read_bytes()
    path.write_bytes(data[:n_bytes])
    return list(iter_tar_samples(path))


def _offsets(tmp_path) -> dict[str, tarfile.TarInfo]:
    path = tmp_path / "o.tar"
    write_tar_shard(path, _samples(4, size=1000))
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_truncated_in_a_member(tmp_path):
    m = _offsets(tmp_path)["s0002.jpg"]
    got = _cut(tmp_path, m.offset_data + 400)
    assert [g.key for g in got[:-1]] == ["s0000", "s0001"] and all(isinstance(g, TarSample) for g in got[:-1])
    assert isinstance(got[-1], TarProblem) and got[-1].key == "s0002"
    assert got[-1].reason.startswith("truncated tar after 2 samples")


@pytest.mark.parametrize("where", ["header", "boundary", "end-blocks"])
def test_truncated_between_members(tmp_path, where):
    """tarfile itself ends quietly on a cut header; the reader must not: the last sample may be incomplete."""
    members = _offsets(tmp_path)
    nxt = members["s0003.jpg"].offset  # the header of the last sample's first member
    last = members["s0003.json"]
    cut = {"header": nxt + 100, "boundary": nxt, "end-blocks": last.offset_data + 512}[where]
    got = _cut(tmp_path, cut)
    assert isinstance(got[-1], TarProblem) and got[-1].reason.startswith("truncated tar after")
    assert all(isinstance(g, TarSample) for g in got[:-1])
    assert len(got) - 1 == (2 if where != "end-blocks" else 3)


def test_corrupt_header_mid_tar(tmp_path):
    path = tmp_path / "c.tar"
    write_tar_shard(path, _samples(4))
    with tarfile.open(path) as tf:
        off = tf.getmember("s0002.jpg").offset
    data = bytearray(path.read_bytes())
    data[off + 148 : off + 156] = b"9999999\0"  # a wrong header checksum
    path.write_bytes(bytes(data))
    got = list(iter_tar_samples(path))
    # s0001's members all came before the damage, but the damaged header may have been one more of them
    assert [g.key for g in got] == ["s0000", "s0001"] and isinstance(got[0], TarSample)
    assert isinstance(got[-1], TarProblem) and got[-1].reason.startswith("damaged tar after 1 samples")
    assert "invalid member header" in got[-1].reason


@pytest.mark.parametrize("compress", ["", "gz", "bz2", "xz"])
@pytest.mark.parametrize("declared", [10**15, 1 << 30, 20000])
def test_member_declaring_more_than_the_tar_holds(tmp_path, compress, declared):
    """A valid header declaring more data than the file holds - tarfile's stream reader would skip a 10**15-byte
    member 10 KiB at a time, for days, past the file's end - is refused at the end of the file, naming it."""
    import bz2
    import gzip
    import lzma

    path = tmp_path / "h.tar"
    write_tar_shard(path, [("a", {"jpg": b"a" * 10}), ("b", {"jpg": b"b" * 10})])
    with tarfile.open(path) as tf:
        header = tf.getmember("b.jpg").offset
    data = bytearray(path.read_bytes())
    _set_size(data, header, declared)
    pack = {"": bytes, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compress]
    path.write_bytes(pack(bytes(data)))
    t0 = time.perf_counter()
    got = _run(lambda: list(iter_tar_samples(path)))
    assert time.perf_counter() - t0 < 2.0
    assert [type(g).__name__ for g in got] == ["TarSample", "TarProblem"] and got[0].data == b"a" * 10
    assert got[1].key == "b" and got[1].url == str(path)
    assert got[1].reason == (
        f"truncated tar after 1 samples: member b.jpg declares {declared} bytes, more than the file holds"
    )


def test_not_a_tar_and_empty(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"hello, not a tar" * 100)
    (tmp_path / "e.tar").write_bytes(b"")
    for name in ["x.tar", "e.tar"]:
        got = list(iter_tar_samples(tmp_path / name))
        assert len(got) == 1 and isinstance(got[0], TarProblem) and got[0].key == ""


def test_fifo_neither_hangs_nor_reads(tmp_path):
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    got = _run(lambda: list(iter_tar_samples(str(fifo))))
    assert len(got) == 1 and "not a regular file" in got[0].reason
    with pytest.raises(InputError, match="pipe.tar.*not a regular file"):
        _run(lambda: expand_shard_patterns([str(tmp_path / "*.tar")]))


def test_expand_shard_patterns(tmp_path):
    for i in range(5):
        (tmp_path / f"{i:06d}.tar").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    d = str(tmp_path)
    got = expand_shard_patterns([f"{d}/{{000003,000001}}.tar", f"{d}/{{000000..000002}}.tar", f"{d}/*.tar"])
    assert got == [f"{d}/{i:06d}.tar" for i in (1, 3, 0, 2, 4)]
    assert expand_shard_patterns([f"{d}/0000{{0{{0,1}},04}}.tar"]) == [f"{d}/{i:06d}.tar" for i in (0, 1, 4)]
    with pytest.raises(InputError, match="3 of the 8 files .* missing, first .*000005.tar"):
        expand_shard_patterns([f"{d}/{{000000..000007}}.tar"])
    with pytest.raises(InputError, match=r"no file matches .*\*\.tgz"):
        expand_shard_patterns([f"{d}/*.tgz"])
    with pytest.raises(InputError, match="sub.*not a regular file"):
        expand_shard_patterns([f"{d}/s*"])
    for bad in [f"{d}/{{000}}.tar", f"{d}/{{000.tar", f"{d}/000}}.tar"]:
        with pytest.raises(InputError, match="shard pattern"):
            expand_shard_patterns([bad])


def _set_size(b: bytearray, header: int, size: int) -> None:
    """Member header at byte `header` declares `size` bytes (GNU base-256 for any size), its checksum kept valid
    so tarfile believes it."""
    b[header + 124 : header + 136] = b"\x80" + size.to_bytes(11, "big")
    b[header + 148 : header + 156] = b" " * 8  # the checksum counts its own field as spaces
    b[header + 148 : header + 156] = b"%06o\0 " % sum(b[header : header + 512])


def _mutate(data: bytes, rng: random.Random, headers: list[int]) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # overwrite a header field (size, type, checksum, name) with junk or a huge number
        off = 512 * rng.randrange(len(b) // 512) + rng.choice([0, 124, 148, 156, 345])
        b[off : off + 12] = rng.choice([b"\x80" + b"\xff" * 11, b"\xff" * 12, rng.randbytes(12), b"77777777777\0"])
    elif kind == 3:  # a member (or pax header) declaring up to 2**87 bytes, behind a valid checksum
        _set_size(b, rng.choice(headers), rng.choice([len(b), 1 << 30, 10**15, 1 << 87]) + rng.randrange(512))
    elif kind == 4:  # drop or duplicate a block
        i = 512 * rng.randrange(len(b) // 512)
        b[i : i + 512] = b"" if rng.random() < 0.5 else b[i : i + 512] * 2
    else:  # a gzip, bz2 or xz magic up front
        b[:3] = rng.choice([b"\x1f\x8b\x08", b"BZh", b"\xfd7z"])
    return bytes(b)


def test_fuzz_ends_with_samples_and_problems(tmp_path):
    """Seeded random damage to a small valid tar: every case ends, in time, with samples and problems only."""
    path = tmp_path / "f.tar"
    write_tar_shard(path, _samples(3, size=200))
    clean = path.read_bytes()
    with tarfile.open(path) as tf:
        headers = [m.offset for m in tf.getmembers()]
    rng = random.Random(0)

    def all_cases() -> float:
        worst = 0.0
        for case in range(300):
            path.write_bytes(_mutate(clean, rng, headers))
            t0 = time.perf_counter()
            got = list(iter_tar_samples(path, max_member_bytes=1 << 16))
            worst = max(worst, time.perf_counter() - t0)
            assert all(isinstance(g, (TarSample, TarProblem)) for g in got), case
            assert sum(isinstance(g, TarSample) for g in got) <= 3, case
        return worst

    assert _run(all_cases, 60.0) < 2.0


def test_long_names_and_hostile_extended_headers(tmp_path):
    """Long member names (pax headers) read back; a pax header of 64 KiB of digits - which makes tarfile's header
    regex backtrack for seconds on Pythons before 3.11.10 - is refused unparsed."""
    key = "d" * 150 + "/x"
    write_tar_shard(tmp_path / "long.tar", [(key, {"png": b"p"})])
    assert [s.key for s in iter_tar_samples(tmp_path / "long.tar")] == [key]
    with tarfile.open(tmp_path / "pax.tar", "w") as tf:
        info = tarfile.TarInfo("././@PaxHeader")
        info.type, info.size = tarfile.XHDTYPE, 65536
        tf.addfile(info, io.BytesIO(b"1" * 65536))
        info = tarfile.TarInfo("a.jpg")
        tf.addfile(info, io.BytesIO(b""))
    t0 = time.perf_counter()
    got = list(iter_tar_samples(tmp_path / "pax.tar"))
    assert time.perf_counter() - t0 < 0.5
    assert len(got) == 1 and isinstance(got[0], TarProblem) and "65536 bytes" in got[0].reason


def test_compressed_tars_stream_too(tmp_path):
    import gzip

    write_tar_shard(tmp_path / "a.tar", _samples(4))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress((tmp_path / "a.tar").read_bytes()))
    plain, packed = (list(iter_tar_samples(tmp_path / n)) for n in ("a.tar", "a.tar.gz"))
    assert [(s.key, s.data, s.extras) for s in packed] == [(s.key, s.data, s.extras) for s in plain]
    data = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    got = list(iter_tar_samples(tmp_path / "cut.tar.gz"))
    assert isinstance(got[-1], TarProblem) and all(isinstance(g, TarSample) for g in got[:-1]) and len(got) >= 2
