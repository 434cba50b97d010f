"""Joining the audio of a long text's parts into one file: streamed, atomic, per container.

Each part is read in fixed-size blocks and written to one temp file renamed onto the
target at the end (``_files.atomic_writer``), so memory does not grow with the length
and no reader sees a half-written file.

- WAV: one header (the first part's ``fmt `` chunk), every part's samples appended,
  the sizes fixed at the end. Parts must agree on encoding, rate, channels and width.
- PCM: 16-bit mono samples concatenated; a pause needs the rate (``pcm_rate``).
- MP3: frames kept, tags (ID3v2, ID3v1, APE) and encoder header frames (Xing, Info,
  VBRI) of every part dropped; parts must agree on MPEG version, layer, rate and
  channels. A pause is silent frames with the first frame's header.
- Opus (Ogg): a chained stream, RFC 7845 section 3: each part's complete logical
  streams one after the other, serial numbers made unique (pages rewritten with new
  CRCs). A pause is its own short Opus stream of silent CELT frames.
- FLAC, AAC: decoded and encoded again with PyAV (the ``audio`` extra).
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ._files import atomic_writer
from .errors import InvalidInputError, UnexpectedResponseError

if TYPE_CHECKING:
    import av.audio.stream

__all__ = ["DECODED_FORMATS", "NATIVE_FORMATS", "JoinedAudio", "check_joinable", "join_files"]

NATIVE_FORMATS = ("wav", "pcm", "mp3", "opus")
"""Formats joined by this module alone."""
DECODED_FORMATS = ("flac", "aac")
"""Formats joined by decoding and encoding again: they need the ``audio`` extra (PyAV)."""

_BLOCK = 1 << 16


@dataclass(frozen=True)
class JoinedAudio:
    """The joined file: where it is, its size, its length when known, its format."""

    path: Path
    bytes: int
    duration_s: float | None
    format: str


def _have_av() -> bool:
    try:
        import av  # noqa: F401  (only on the long path, and only for flac and aac)
    except ImportError:
        return False
    return True


def check_joinable(fmt: str) -> None:
    """Raise InvalidInputError unless parts in ``fmt`` can be joined here."""
    if fmt in NATIVE_FORMATS:
        return
    works = ", ".join(NATIVE_FORMATS)
    if fmt in DECODED_FORMATS:
        if _have_av():
            return
        raise InvalidInputError(
            f"Text this long is spoken in parts, and joining {fmt} parts into one file "
            f"needs the audio extra: pip install 'octave-tools[audio]'. Without it, ask "
            f"for one of {works}, or keep the text within one request.",
            field="format",
        )
    raise InvalidInputError(
        f"Parts in the format {fmt!r} cannot be joined into one file; ask for one of "
        f"{works}, {', '.join(DECODED_FORMATS)}.",
        field="format",
    )


def join_files(
    parts: Sequence[Path],
    fmt: str,
    target: Path,
    *,
    pause_ms: int = 0,
    pcm_rate: int = 24000,
) -> JoinedAudio:
    """Join ``parts`` (files in ``fmt``, in order) into ``target``, ``pause_ms`` of silence apart.

    Raises InvalidInputError for a format or pause that cannot be joined, and
    UnexpectedResponseError for a part that is not valid audio in ``fmt`` or disagrees
    with the first (rate, channels, ...); ``target`` is then left untouched.
    """
    check_joinable(fmt)
    if not parts:
        raise InvalidInputError("There are no parts to join.", field="parts")
    if pause_ms < 0:
        raise InvalidInputError(f"pause_ms must be 0 or more, not {pause_ms}.", field="pause_ms")
    joiner: Callable[[Sequence[Path], IO[bytes], int, int], float | None] = _JOINERS[fmt]
    with atomic_writer(target) as out:
        duration = joiner(parts, out, pause_ms, pcm_rate)
    return JoinedAudio(path=target, bytes=target.stat().st_size, duration_s=duration, format=fmt)


def _bad_part(index: int, problem: str) -> UnexpectedResponseError:
    return UnexpectedResponseError(
        f"Part {index + 1}'s audio {problem}; the parts cannot be joined into one file.",
        status_code=200,
        body_excerpt="",
    )


class _Reader:
    """A file read in fixed blocks, with look-ahead: memory is one block plus one unit."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def ensure(self, n: int) -> bool:
        """Whether ``n`` bytes are available from the current position (reads as needed)."""
        while len(self.buf) - self.pos < n and not self.eof:
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            block = self.fh.read(max(_BLOCK, n))
            if not block:
                self.eof = True
            self.buf += block
        return len(self.buf) - self.pos >= n

    def peek(self, n: int) -> bytes:
        self.ensure(n)
        return bytes(self.buf[self.pos : self.pos + n])

    def take(self, n: int) -> memoryview:
        self.ensure(n)
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += len(view)
        return view

    def skip(self, n: int) -> None:
        have = len(self.buf) - self.pos
        if n <= have:
            self.pos += n
            return
        self.buf.clear()
        self.pos = 0
        self.fh.seek(n - have, 1)

    def copy_to(self, out: IO[bytes], n: int | None) -> int:
        """Copy ``n`` bytes (None: to the end) to ``out``; returns how many there were."""
        done = 0
        while n is None or done < n:
            if not self.ensure(1):
                break
            have = len(self.buf) - self.pos
            want = have if n is None else min(n - done, have)
            with self.take(want) as view:
                out.write(view)
            done += want
        return done


def _write_silence(out: IO[bytes], nbytes: int, fill: int = 0) -> None:
    block = bytes([fill]) * min(nbytes, _BLOCK)
    while nbytes > 0:
        out.write(block[:nbytes])
        nbytes -= len(block)


# ---------------------------------------------------------------- WAV and PCM

_WAV_SILENCE = {6: 0xD5, 7: 0xFF}  # A-law and µ-law silence; 8-bit PCM is 0x80


@dataclass(frozen=True)
class _WavFormat:
    chunk: bytes  # the whole fmt chunk body, written as is
    tag: int
    channels: int
    rate: int
    block_align: int
    bits: int
    subformat: bytes

    def describe(self) -> str:
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}-channel")
        return f"{self.rate:,} Hz {layout} {self.bits}-bit (format {self.tag})"

    def key(self) -> tuple[int, int, int, int, bytes]:
        return (self.tag, self.channels, self.rate, self.bits, self.subformat)


def _read_wav_header(reader: _Reader, index: int, size: int) -> tuple[_WavFormat, int]:
    """Parse up to the data chunk; returns the format and the data length in bytes."""
    head = reader.peek(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise _bad_part(index, "is not a WAV file (no RIFF/WAVE header)")
    reader.skip(12)
    consumed = 12
    fmt: _WavFormat | None = None
    while True:
        chunk_head = reader.peek(8)
        if len(chunk_head) < 8:
            raise _bad_part(index, "is a WAV file with no data chunk")
        chunk_id, chunk_size = chunk_head[:4], struct.unpack("<I", chunk_head[4:])[0]
        reader.skip(8)
        consumed += 8
        if chunk_id == b"data":
            if fmt is None:
                raise _bad_part(index, "is a WAV file with no fmt chunk before its data")
            rest = size - consumed
            # Streamed WAVs often carry 0 or 0xFFFFFFFF: the data runs to the end.
            length = rest if chunk_size in (0, 0xFFFFFFFF) or chunk_size > rest else chunk_size
            return fmt, length - length % fmt.block_align
        if chunk_id == b"fmt ":
            body = reader.peek(chunk_size)
            if chunk_size < 16 or len(body) < chunk_size:
                raise _bad_part(index, "is a WAV file with a short fmt chunk")
            tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
            subformat = body[24:40] if tag == 0xFFFE and chunk_size >= 40 else b""
            if channels < 1 or rate < 1 or block_align < 1:
                raise _bad_part(index, "is a WAV file with an impossible fmt chunk")
            fmt = _WavFormat(body, tag, channels, rate, block_align, bits, subformat)
        padded = chunk_size + (chunk_size & 1)
        reader.skip(padded)
        consumed += padded


def _silence_fill(fmt: _WavFormat) -> int:
    if fmt.tag == 1 and fmt.bits == 8:
        return 0x80
    return _WAV_SILENCE.get(fmt.tag, 0)


def _join_wav(parts: Sequence[Path], out: IO[bytes], pause_ms: int, _: int) -> float | None:
    first: _WavFormat | None = None
    data_bytes = 0
    for index, part in enumerate(parts):
        with part.open("rb") as fh:
            reader = _Reader(fh)
            fmt, length = _read_wav_header(reader, index, part.stat().st_size)
            if first is None:
                first = fmt
                out.write(b"RIFF\0\0\0\0WAVEfmt ")
                out.write(struct.pack("<I", len(fmt.chunk)) + fmt.chunk)
                if len(fmt.chunk) & 1:
                    out.write(b"\0")
                out.write(b"data\0\0\0\0")
            elif fmt.key() != first.key():
                raise _bad_part(index, f"is {fmt.describe()}, but part 1's is {first.describe()}")
            elif pause_ms:
                frames = round(first.rate * pause_ms / 1000)
                _write_silence(out, frames * first.block_align, _silence_fill(first))
                data_bytes += frames * first.block_align
            data_bytes += reader.copy_to(out, length)
    assert first is not None
    header = 12 + 8 + len(first.chunk) + (len(first.chunk) & 1)
    if data_bytes & 1:
        out.write(b"\0")
    if header + 8 + data_bytes > 0xFFFFFFFF:
        raise InvalidInputError(
            "The joined audio would be larger than the 4 GiB a WAV file can hold; "
            "ask for mp3 or opus, or split the text into several calls.",
            field="format",
        )
    out.seek(4)
    out.write(struct.pack("<I", header + 8 + data_bytes + (data_bytes & 1) - 8))
    out.seek(header + 4)
    out.write(struct.pack("<I", data_bytes))
    out.seek(0, 2)
    return data_bytes / (first.rate * first.block_align)


def _join_pcm(parts: Sequence[Path], out: IO[bytes], pause_ms: int, rate: int) -> float | None:
    total = 0
    for index, part in enumerate(parts):
        if index and pause_ms:
            silence = round(rate * pause_ms / 1000) * 2
            _write_silence(out, silence)
            total += silence
        with part.open("rb") as fh:
            size = part.stat().st_size
            total += _Reader(fh).copy_to(out, size - size % 2)  # whole 16-bit samples
    return total / (rate * 2)


# ---------------------------------------------------------------- MP3

_MP3_BITRATES = {  # (MPEG-1?, layer) -> kbit/s by index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_VERSIONS = {3: "MPEG-1", 2: "MPEG-2", 0: "MPEG-2.5"}


@dataclass(frozen=True)
class _Mp3Frame:
    header: bytes
    version: int  # 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5
    layer: int  # 1, 2, 3
    rate: int
    mono: bool
    crc: bool
    length: int
    samples: int

    def key(self) -> tuple[int, int, int, bool]:
        return (self.version, self.layer, self.rate, self.mono)

    def describe(self) -> str:
        layout = "mono" if self.mono else "stereo"
        return f"{_MP3_VERSIONS[self.version]} layer {self.layer} {self.rate:,} Hz {layout}"

    def is_encoder_header(self, body: bytes) -> bool:
        """Whether this frame is a Xing/Info/VBRI header (LAME, FFmpeg, Fraunhofer): no audio."""
        if self.layer != 3:
            return False
        side = (17 if self.mono else 32) if self.version == 3 else (9 if self.mono else 17)
        at = 4 + (2 if self.crc else 0) + side
        return body[at : at + 4] in (b"Xing", b"Info") or body[36:40] == b"VBRI"


@functools.lru_cache(maxsize=512)
def _mp3_frame(header: bytes) -> _Mp3Frame | None:
    """The frame a 4-byte header starts, or None if these bytes are not a frame header.

    Cached: a file has a handful of distinct headers, so frames of one stream share one
    object and comparing them is an identity check.
    """
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 3
    layer = 4 - ((header[1] >> 1) & 3)
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values; free-format bitrate is not supported
    if header[3] & 3 == 2:
        return None  # reserved emphasis
    mpeg1 = version == 3
    bitrate = _MP3_BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    if layer == 1:
        length, samples = (12 * bitrate // rate + padding) * 4, 384
    elif layer == 2 or mpeg1:
        length, samples = 144 * bitrate // rate + padding, 1152
    else:
        length, samples = 72 * bitrate // rate + padding, 576
    return _Mp3Frame(
        bytes(header[:4]), version, layer, rate, header[3] >> 6 == 3, not header[1] & 1,
        length, samples,
    )  # fmt: skip


def _syncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def _skip_tag(reader: _Reader) -> bool:
    """Skip an ID3v2, ID3v1, APE or Lyrics3 tag at the current position, if one is there."""
    head = reader.peek(32)
    if head[:3] == b"ID3" and len(head) >= 10:
        footer = 10 if head[5] & 0x10 else 0
        reader.skip(10 + _syncsafe(head[6:10]) + footer)
        return True
    if head[:8] == b"APETAGEX" and len(head) >= 32:
        size = struct.unpack("<I", head[12:16])[0]  # the items and the footer
        is_header = struct.unpack("<I", head[20:24])[0] & 0x20000000
        # From a header: it, the items and the footer. A footer alone: its items were
        # already passed over as bytes that are not frames.
        reader.skip(32 + size if is_header else 32)
        return True
    if head[:3] == b"TAG":
        reader.skip(128)
        return True
    if head[:11] == b"LYRICSBEGIN":
        block = reader.peek(5100 + 15)
        end = block.find(b"LYRICS200")
        if end < 0:
            end = block.find(b"LYRICSEND")
        reader.skip(end + 9 if end >= 0 else 11)
        return True
    return False


def _next_mp3_frame(reader: _Reader, anchor: _Mp3Frame | None) -> _Mp3Frame | None:
    """Move to the next audio frame (skipping tags and junk); None at the end.

    A frame like the one before (``anchor``) is trusted; any other header must be
    confirmed by the one after it (or the end, or a tag), so that junk which happens
    to look like a header is skipped rather than taken for a frame.
    """
    while reader.ensure(4):
        frame = _mp3_frame(reader.peek(4))
        if frame is not None and (
            frame is anchor
            or (anchor is not None and frame.key() == anchor.key())
            or _confirmed(reader, frame)
        ):
            return frame
        if not _skip_tag(reader):
            reader.skip(1)  # junk between frames: look for the next sync
    return None


def _confirmed(reader: _Reader, frame: _Mp3Frame) -> bool:
    following = reader.peek(frame.length + 4)[frame.length :]
    if len(following) < 4:
        return True  # the end of the file
    after = _mp3_frame(bytes(following[:4]))
    if after is not None:
        return after.key() == frame.key()
    return following[:3] in (b"TAG", b"ID3") or following[:4] in (b"APET", b"LYRI")


def _silent_mp3_frame(first: _Mp3Frame) -> bytes:
    """A frame like the first with no CRC, no padding and all-zero side info: silence."""
    header = bytearray(first.header)
    header[1] |= 1  # no CRC
    header[2] &= ~2 & 0xFF  # no padding
    frame = _mp3_frame(bytes(header))
    assert frame is not None
    return bytes(header) + bytes(frame.length - 4)


def _join_mp3(parts: Sequence[Path], out: IO[bytes], pause_ms: int, _: int) -> float | None:
    first: _Mp3Frame | None = None
    samples = 0
    for index, part in enumerate(parts):
        if index and pause_ms and first is not None:
            silent = _silent_mp3_frame(first)
            count = max(1, round(first.rate * pause_ms / 1000 / first.samples))
            for _i in range(count):
                out.write(silent)
            samples += count * first.samples
        with part.open("rb") as fh:
            reader = _Reader(fh)
            anchor: _Mp3Frame | None = None
            while (frame := _next_mp3_frame(reader, anchor)) is not None:
                if first is not None and frame is not first and frame.key() != first.key():
                    raise _bad_part(
                        index, f"is {frame.describe()}, but part 1's is {first.describe()}"
                    )
                if not reader.ensure(frame.length):
                    break  # a cut-off last frame: dropped
                body = reader.take(frame.length)
                if anchor is None and frame.is_encoder_header(bytes(body[:48])):
                    body.release()
                    anchor = frame
                    continue
                out.write(body)
                body.release()
                anchor = frame
                first = first or frame
                samples += frame.samples
            if anchor is None:
                raise _bad_part(index, "holds no MP3 frame")
    assert first is not None
    return samples / first.rate


# ---------------------------------------------------------------- Ogg (Opus)

_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(page: bytes | bytearray | memoryview) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, MSB first, no inversion).

    Computed by zlib's reflected CRC-32 over bit-reversed bytes: C speed, not a
    Python loop.
    """
    reflected = zlib.crc32(bytes(page).translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def _ogg_page(
    header_type: int, granule: int, serial: int, sequence: int, packets: Sequence[bytes]
) -> bytes:
    """One Ogg page holding whole ``packets`` (each under 255 x 255 bytes in all)."""
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    page = bytearray(b"OggS\0")
    page += struct.pack("<BqIII", header_type, granule, serial, sequence, 0)
    page += bytes([len(lacing)]) + lacing + b"".join(packets)
    page[22:26] = struct.pack("<I", ogg_crc(page))
    return bytes(page)


def opus_stream(
    packets: Sequence[bytes],
    samples_per_packet: int,
    serial: int,
    *,
    channels: int = 1,
    total: int | None = None,
) -> bytes:
    """A complete Ogg Opus stream (OpusHead, OpusTags, audio pages) of these packets.

    ``total`` (48 kHz samples) below the packets' length trims the end (RFC 7845 4.4).
    """
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, 48000, 0, 0)
    vendor = b"octave-tools"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_ogg_page(0x02, 0, serial, 0, [head]), _ogg_page(0, 0, serial, 1, [tags])]
    granule, sequence = 0, 2
    for start in range(0, len(packets), 200):
        chunk = packets[start : start + 200]
        granule += samples_per_packet * len(chunk)
        last = start + 200 >= len(packets)
        if last and total is not None:
            granule = total
        pages.append(_ogg_page(0x04 if last else 0, granule, serial, sequence, chunk))
        sequence += 1
    return b"".join(pages)


# A 20 ms CELT frame (TOC config 31, mono, one frame) whose range-coded silence flag is
# set: every Opus decoder outputs 960 samples of silence for it.
SILENT_OPUS_PACKET = b"\xf8\xff\xfe"


@dataclass
class _OggStream:
    codec: str
    channels: int
    rate: int
    pre_skip: int
    granule: int = 0


def _codec_of(packet: bytes) -> tuple[str, int, int, int] | None:
    """(codec, channels, rate, pre-skip) from a stream's first packet."""
    if packet[:8] == b"OpusHead" and len(packet) >= 19:
        return "opus", packet[9], 48000, struct.unpack("<H", packet[10:12])[0]
    if packet[:7] == b"\x01vorbis" and len(packet) >= 16:
        return "vorbis", packet[11], struct.unpack("<I", packet[12:16])[0], 0
    return None


def _join_ogg(parts: Sequence[Path], out: IO[bytes], pause_ms: int, _: int) -> float | None:
    used: set[int] = set()
    first: _OggStream | None = None
    seconds = 0.0

    def fresh_serial(old: int) -> int:
        serial = old
        while serial in used:
            serial = (serial * 1103515245 + 12345) & 0xFFFFFFFF
        used.add(serial)
        return serial

    for index, part in enumerate(parts):
        if index and pause_ms and first is not None:
            if first.codec != "opus" or first.channels > 2:
                raise InvalidInputError(
                    "A pause between parts can be written in Opus (mono or stereo) "
                    f"only; these parts are {first.codec} with {first.channels} channels. "
                    "Use pause_ms=0, or ask for wav, mp3 or pcm.",
                    field="pause_ms",
                )
            count = max(1, round(pause_ms / 20))
            out.write(opus_stream([SILENT_OPUS_PACKET] * count, 960, fresh_serial(0x50415553)))
            seconds += count * 0.02
        serials: dict[int, int] = {}
        streams: dict[int, _OggStream] = {}
        pending: bytearray | None = None
        with part.open("rb") as fh:
            reader = _Reader(fh)
            while reader.ensure(1):
                head = reader.peek(27)
                if len(head) < 27 or head[:5] != b"OggS\0":
                    raise _bad_part(index, "is not an Ogg stream (no page where one should be)")
                table = reader.peek(27 + head[26])[27:]
                size = 27 + head[26] + sum(table)
                if not reader.ensure(size):
                    break  # a cut-off last page: dropped
                page = bytearray(reader.take(size))
                stored = struct.unpack("<I", page[22:26])[0]
                page[22:26] = b"\0\0\0\0"
                if ogg_crc(page) != stored:
                    raise _bad_part(index, "has an Ogg page with a wrong checksum")
                header_type = page[5]
                granule, serial = struct.unpack("<qI", page[6:18])
                if serial not in serials:
                    if not header_type & 0x02:
                        raise _bad_part(index, "has an Ogg page of a stream that never began")
                    body = 27 + head[26]
                    first_packet = bytes(page[body : body + table[0]]) if table else b""
                    codec = _codec_of(first_packet)
                    if codec is None:
                        raise _bad_part(index, "is an Ogg stream of neither Opus nor Vorbis")
                    stream = _OggStream(*codec)
                    if first is None:
                        first = stream
                    elif (stream.codec, stream.channels) != (first.codec, first.channels):
                        raise _bad_part(
                            index,
                            f"is {stream.codec} with {stream.channels} channels, but part 1's "
                            f"is {first.codec} with {first.channels}",
                        )
                    serials[serial] = fresh_serial(serial)
                    streams[serial] = stream
                if granule >= 0:
                    streams[serial].granule = granule
                if serials[serial] != serial:
                    page[14:18] = struct.pack("<I", serials[serial])
                if pending is not None:
                    out.write(pending)
                pending = _with_crc(page)
        if pending is None:
            raise _bad_part(index, "holds no Ogg page")
        if not pending[5] & 0x04:
            pending[5] |= 0x04  # the part's stream must end before the next begins
            pending = _with_crc(pending)
        out.write(pending)
        for stream in streams.values():
            seconds += max(0, stream.granule - stream.pre_skip) / stream.rate
    return seconds


def _with_crc(page: bytearray) -> bytearray:
    page[22:26] = b"\0\0\0\0"
    page[22:26] = struct.pack("<I", ogg_crc(page))
    return page


# ---------------------------------------------------------------- FLAC, AAC (PyAV)

_AV_OUTPUT = {"flac": ("flac", "flac"), "aac": ("adts", "aac")}  # container, codec


def _decoded_joiner(fmt: str) -> Callable[[Sequence[Path], IO[bytes], int, int], float | None]:
    def join(parts: Sequence[Path], out: IO[bytes], pause_ms: int, _: int) -> float | None:
        return _join_with_av(parts, out, pause_ms, fmt)

    return join


def _join_with_av(parts: Sequence[Path], out: IO[bytes], pause_ms: int, fmt: str) -> float:
    import av

    container, codec = _AV_OUTPUT[fmt]
    samples = 0
    with av.open(out, mode="w", format=container) as output:
        stream: av.audio.stream.AudioStream | None = None
        resampler: av.AudioResampler | None = None

        def encode(frame: av.AudioFrame | None) -> None:
            nonlocal samples
            assert stream is not None
            if frame is not None:
                frame.pts = samples
                samples += frame.samples
            for packet in stream.encode(frame):
                output.mux(packet)

        for index, part in enumerate(parts):
            try:
                source = av.open(str(part))
            except av.FFmpegError as exc:
                raise _bad_part(index, f"cannot be read as {fmt} ({exc})") from None
            with source:
                if not source.streams.audio:
                    raise _bad_part(index, f"cannot be read as {fmt} (no audio in it)")
                audio = source.streams.audio[0]
                if audio.codec_context.name != codec:
                    raise _bad_part(
                        index, f"cannot be read as {fmt} (it is {audio.codec_context.name})"
                    )
                if stream is None:
                    rate = audio.codec_context.sample_rate
                    stream = output.add_stream(codec, rate=rate)
                    layout = audio.codec_context.layout.name
                    stream.layout = layout
                    resampler = av.AudioResampler(
                        format=stream.format.name, layout=layout, rate=rate
                    )
                elif pause_ms:
                    encode(_silence_frame(stream, round(stream.rate * pause_ms / 1000)))
                assert resampler is not None
                before = samples
                try:
                    for frame in source.decode(audio):
                        frame.pts = None
                        for converted in resampler.resample(frame):
                            encode(converted)
                except av.FFmpegError as exc:
                    raise _bad_part(index, f"cannot be decoded as {fmt} ({exc})") from None
                for converted in resampler.resample(None):
                    encode(converted)
                if samples == before:
                    raise _bad_part(index, f"cannot be read as {fmt} (no audio in it)")
                resampler = av.AudioResampler(
                    format=stream.format.name, layout=stream.layout.name, rate=stream.rate
                )
        encode(None)
        assert stream is not None
        rate = stream.rate
    return samples / rate


def _silence_frame(stream: av.audio.stream.AudioStream, count: int) -> av.AudioFrame:
    import av

    frame = av.AudioFrame(format=stream.format.name, layout=stream.layout.name, samples=count)
    frame.sample_rate = stream.rate
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    return frame


_JOINERS: dict[str, Callable[[Sequence[Path], IO[bytes], int, int], float | None]] = {
    "wav": _join_wav,
    "pcm": _join_pcm,
    "mp3": _join_mp3,
    "opus": _join_ogg,
    "flac": _decoded_joiner("flac"),
    "aac": _decoded_joiner("aac"),
}
