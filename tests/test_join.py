"""Joining parts into one file: every format decodes, its length is the sum of its parts."""

from __future__ import annotations

import importlib.util
import io
import struct
import subprocess
import sys
import time
import tracemalloc
import wave
from pathlib import Path

import httpx
import pytest

from octave_tools._join import (
    SILENT_OPUS_PACKET,
    check_joinable,
    join_files,
    ogg_crc,
    opus_stream,
)
from octave_tools.errors import InvalidInputError, UnexpectedResponseError
from octave_tools.testing import SECONDS_PER_CHARACTER, FakeAIMLAPI, make_audio

HAVE_AV = importlib.util.find_spec("av") is not None
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV (the audio extra) is not installed")


def write_parts(tmp_path: Path, fmt: str, sizes: list[int]) -> list[Path]:
    parts = []
    for index, characters in enumerate(sizes):
        path = tmp_path / f"part{index}.{fmt}"
        path.write_bytes(make_audio(fmt, characters))
        parts.append(path)
    return parts


def wav_bytes(samples: bytes, *, rate: int = 24000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ---------------------------------------------------------------- WAV and PCM


def test_wav_parts_join_into_one_header_and_all_samples_in_order(tmp_path: Path) -> None:
    parts = [tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"]
    for path, fill in zip(parts, (b"\x01\x00", b"\x02\x00", b"\x03\x00"), strict=True):
        path.write_bytes(wav_bytes(fill * 1000))
    joined = join_files(parts, "wav", tmp_path / "out.wav")
    with wave.open(str(joined.path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.readframes(w.getnframes()) == b"\x01\x00" * 1000 + b"\x02\x00" * 1000 + (
            b"\x03\x00" * 1000
        )
    assert joined.bytes == 44 + 6000 == joined.path.stat().st_size
    assert joined.duration_s == 3000 / 24000
    assert joined.format == "wav"


def test_a_wav_pause_is_exact_silence_between_parts_only(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, "wav", [10, 20])
    joined = join_files(parts, "wav", tmp_path / "out.wav", pause_ms=250)
    with wave.open(str(joined.path)) as w:
        frames = w.readframes(w.getnframes())
    first = 10 * 576 * 2
    assert len(frames) == (30 * 576 + 6000) * 2
    assert frames[first : first + 12000] == bytes(12000)
    assert frames[first + 12000 :] == make_audio("wav", 20)[44:]
    assert joined.duration_s == pytest.approx(30 * SECONDS_PER_CHARACTER + 0.25)


def test_an_8_bit_wav_pause_is_its_midpoint_not_zero(tmp_path: Path) -> None:
    parts = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for path in parts:
        path.write_bytes(wav_bytes(b"\x90" * 80, rate=8000, width=1))
    joined = join_files(parts, "wav", tmp_path / "out.wav", pause_ms=10)
    with wave.open(str(joined.path)) as w:
        assert w.readframes(w.getnframes()) == b"\x90" * 80 + b"\x80" * 80 + b"\x90" * 80


def test_a_streamed_wav_with_unknown_sizes_and_extra_chunks_joins(tmp_path: Path) -> None:
    plain = wav_bytes(b"\x05\x00" * 100)
    # A LIST chunk of odd size (padded) before the data, and 0xFFFFFFFF sizes as a
    # streaming encoder writes them.
    streamed = (
        b"RIFF\xff\xff\xff\xffWAVE"
        + plain[12:36]
        + b"LIST\x03\x00\x00\x00abc\x00"
        + b"data\xff\xff\xff\xff"
        + b"\x06\x00" * 100
        + b"\x07"  # half a sample at the end: dropped
    )
    (tmp_path / "a.wav").write_bytes(plain)
    (tmp_path / "b.wav").write_bytes(streamed)
    joined = join_files([tmp_path / "a.wav", tmp_path / "b.wav"], "wav", tmp_path / "o.wav")
    with wave.open(str(joined.path)) as w:
        assert w.readframes(w.getnframes()) == b"\x05\x00" * 100 + b"\x06\x00" * 100


def test_wav_parts_that_disagree_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav_bytes(bytes(100)))
    (tmp_path / "b.wav").write_bytes(wav_bytes(bytes(100), rate=44100, channels=2))
    target = tmp_path / "out.wav"
    target.write_bytes(b"before")
    with pytest.raises(UnexpectedResponseError) as info:
        join_files([tmp_path / "a.wav", tmp_path / "b.wav"], "wav", target)
    assert str(info.value) == (
        "Part 2's audio is 44,100 Hz stereo 16-bit (format 1), but part 1's is 24,000 Hz "
        "mono 16-bit (format 1); the parts cannot be joined into one file."
    )
    assert target.read_bytes() == b"before"
    assert leftovers(tmp_path) == []


def test_a_part_that_is_not_a_wav_is_refused_by_number(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav_bytes(bytes(100)))
    (tmp_path / "b.wav").write_bytes(b'{"error": "oops"}')
    with pytest.raises(UnexpectedResponseError, match=r"^Part 2's audio is not a WAV file"):
        join_files([tmp_path / "a.wav", tmp_path / "b.wav"], "wav", tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists()


def test_pcm_parts_are_concatenated_with_silence_at_the_given_rate(tmp_path: Path) -> None:
    (tmp_path / "a.pcm").write_bytes(b"\x01\x02" * 50)
    (tmp_path / "b.pcm").write_bytes(b"\x03\x04" * 50 + b"\x05")  # an odd byte: dropped
    joined = join_files(
        [tmp_path / "a.pcm", tmp_path / "b.pcm"], "pcm", tmp_path / "o.pcm",
        pause_ms=10, pcm_rate=16000,
    )  # fmt: skip
    assert joined.path.read_bytes() == b"\x01\x02" * 50 + bytes(320) + b"\x03\x04" * 50
    assert joined.duration_s == (100 + 160) / 16000


# ---------------------------------------------------------------- MP3


def mp3_frames(data: bytes) -> list[bytes]:
    """Every frame of ``data``, which must be frames only, back to back."""
    from octave_tools._join import _mp3_frame

    frames, pos = [], 0
    while pos < len(data):
        frame = _mp3_frame(data[pos : pos + 4])
        assert frame is not None, f"no frame header at byte {pos}"
        assert pos + frame.length <= len(data)
        frames.append(data[pos : pos + frame.length])
        pos += frame.length
    return frames


def test_mp3_parts_keep_their_frames_and_lose_tags_and_info_frames(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, "mp3", [10, 20, 5])
    assert all(p.read_bytes().startswith(b"ID3") for p in parts)
    joined = join_files(parts, "mp3", tmp_path / "out.mp3")
    data = joined.path.read_bytes()
    frames = mp3_frames(data)
    assert len(frames) == 35
    assert {f[:4] for f in frames} == {b"\xff\xf3\x44\xc0"}
    assert b"Info" not in data and b"ID3" not in data and b"TAG" not in data
    assert joined.duration_s == pytest.approx(35 * 0.024)


def test_an_mp3_pause_is_silent_frames_like_the_first(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, "mp3", [3, 3])
    joined = join_files(parts, "mp3", tmp_path / "out.mp3", pause_ms=100)
    frames = mp3_frames(joined.path.read_bytes())
    assert len(frames) == 3 + 4 + 3  # 100 ms at 24 ms a frame: 4 frames
    assert frames[3:7] == [b"\xff\xf3\x44\xc0" + bytes(92)] * 4
    assert joined.duration_s == pytest.approx(10 * 0.024)


def test_junk_and_trailing_ape_tags_between_mp3_frames_are_dropped(tmp_path: Path) -> None:
    frame = b"\xff\xf3\x44\xc0" + bytes(92)
    ape = b"APETAGEX" + struct.pack("<IIII", 2000, 32, 0, 0) + bytes(8)
    (tmp_path / "a.mp3").write_bytes(b"junk" + frame * 3 + b"\x00\x01" + frame + ape)
    joined = join_files([tmp_path / "a.mp3"], "mp3", tmp_path / "out.mp3")
    assert joined.path.read_bytes() == frame * 4


def test_a_large_id3_tag_and_an_ape_tag_with_a_header_are_skipped(tmp_path: Path) -> None:
    frame = b"\xff\xf3\x44\xc0" + bytes(92)
    art = bytes([0xFF, 0xF3, 0x44, 0xC0]) * 100_000  # cover art that looks like frames
    size = len(art)
    id3 = b"ID3\x04\x00\x00" + bytes(
        [(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F]
    )
    items = b"\x05\x00\x00\x00\x00\x00\x00\x00Title\x00fake\xff"
    flags_header, flags_footer = 0xA0000000, 0x80000000
    ape = (
        b"APETAGEX" + struct.pack("<IIII", 2000, len(items) + 32, 1, flags_header) + bytes(8)
        + items
        + b"APETAGEX" + struct.pack("<IIII", 2000, len(items) + 32, 1, flags_footer) + bytes(8)
    )  # fmt: skip
    (tmp_path / "a.mp3").write_bytes(id3 + art + frame * 2 + ape + b"TAG" + bytes(125))
    joined = join_files([tmp_path / "a.mp3"], "mp3", tmp_path / "out.mp3")
    assert joined.path.read_bytes() == frame * 2


def test_a_part_of_one_mp3_frame_and_a_tag_keeps_its_frame(tmp_path: Path) -> None:
    frame = b"\xff\xf3\x44\xc0" + bytes(92)
    (tmp_path / "a.mp3").write_bytes(frame + b"TAG" + bytes(125))
    (tmp_path / "b.mp3").write_bytes(b"\xff\xf3" + frame + b"\xff")  # a false sync, a cut frame
    joined = join_files([tmp_path / "a.mp3", tmp_path / "b.mp3"], "mp3", tmp_path / "o.mp3")
    assert joined.path.read_bytes() == frame * 2


def test_mp3_parts_at_another_rate_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.mp3").write_bytes(make_audio("mp3", 3))
    other = b"\xff\xfb\x90\xc4" + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
    (tmp_path / "b.mp3").write_bytes(other * 3)
    with pytest.raises(UnexpectedResponseError) as info:
        join_files([tmp_path / "a.mp3", tmp_path / "b.mp3"], "mp3", tmp_path / "out.mp3")
    assert "Part 2's audio is MPEG-1 layer 3 44,100 Hz mono, but part 1's is MPEG-2 layer 3 " \
        "24,000 Hz mono" in str(info.value)  # fmt: skip


def test_an_mp3_part_without_frames_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.mp3").write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(UnexpectedResponseError, match="Part 1's audio holds no MP3 frame"):
        join_files([tmp_path / "a.mp3"], "mp3", tmp_path / "out.mp3")


# ---------------------------------------------------------------- Ogg Opus


def ogg_pages(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(header type, granule, serial, sequence, page) for every page, checking each CRC."""
    pages, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 5] == b"OggS\0", f"no page at byte {pos}"
        count = data[pos + 26]
        size = 27 + count + sum(data[pos + 27 : pos + 27 + count])
        page = data[pos : pos + size]
        header_type, granule, serial, sequence, crc = struct.unpack("<BqIII", page[5:26])
        assert ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) == crc
        pages.append((header_type, granule, serial, sequence, page))
        pos += size
    return pages


def chain_of(data: bytes) -> list[tuple[int, int]]:
    """(serial, last granule) per logical stream, checking each is a whole, ordered stream."""
    streams: list[tuple[int, int]] = []
    current: int | None = None
    expected = 0
    for header_type, granule, serial, sequence, _ in ogg_pages(data):
        if current is None:
            assert header_type & 0x02, "a stream must begin with a BOS page"
            assert serial not in [s for s, _ in streams], "serials must be unique"
            current, expected = serial, 0
        assert serial == current
        assert sequence == expected
        expected += 1
        if header_type & 0x04:
            streams.append((serial, granule))
            current = None
    assert current is None, "the last stream must end with an EOS page"
    return streams


def test_opus_parts_become_a_chained_stream(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, "opus", [10, 25])
    joined = join_files(parts, "opus", tmp_path / "out.opus")
    chain = chain_of(joined.path.read_bytes())
    assert [granule for _, granule in chain] == [10 * 1152, 25 * 1152]
    assert joined.duration_s == pytest.approx(35 * SECONDS_PER_CHARACTER)


def test_opus_parts_sharing_a_serial_are_given_new_ones_with_new_crcs(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.opus").write_bytes(opus_stream([SILENT_OPUS_PACKET] * 5, 960, 7))
    parts = [tmp_path / "a.opus", tmp_path / "b.opus", tmp_path / "c.opus"]
    joined = join_files(parts, "opus", tmp_path / "out.opus")
    chain = chain_of(joined.path.read_bytes())
    assert len({serial for serial, _ in chain}) == 3
    assert chain[0][0] == 7
    assert joined.duration_s == pytest.approx(0.3)


def test_an_opus_pause_is_a_stream_of_silent_frames(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, "opus", [10, 10])
    joined = join_files(parts, "opus", tmp_path / "out.opus", pause_ms=400)
    chain = chain_of(joined.path.read_bytes())
    assert [granule for _, granule in chain] == [11520, 20 * 960, 11520]
    assert joined.duration_s == pytest.approx(20 * SECONDS_PER_CHARACTER + 0.4)


def test_a_part_whose_stream_does_not_end_gets_its_end_page(tmp_path: Path) -> None:
    data = bytearray(opus_stream([SILENT_OPUS_PACKET] * 5, 960, 1))
    last = data.rindex(b"OggS")
    data[last + 5] &= ~0x04 & 0xFF  # a stream cut short: no EOS flag
    data[last + 22 : last + 26] = b"\0\0\0\0"
    data[last + 22 : last + 26] = struct.pack("<I", ogg_crc(bytes(data[last:])))
    (tmp_path / "a.opus").write_bytes(bytes(data))
    (tmp_path / "b.opus").write_bytes(make_audio("opus", 5))
    joined = join_files([tmp_path / "a.opus", tmp_path / "b.opus"], "opus", tmp_path / "o.opus")
    assert len(chain_of(joined.path.read_bytes())) == 2


def test_an_ogg_page_with_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    data = bytearray(make_audio("opus", 5))
    data[-1] ^= 0xFF
    (tmp_path / "a.opus").write_bytes(bytes(data))
    with pytest.raises(UnexpectedResponseError, match="wrong checksum"):
        join_files([tmp_path / "a.opus"], "opus", tmp_path / "out.opus")


def test_a_pause_in_ogg_vorbis_is_refused_with_the_fix(tmp_path: Path) -> None:
    from octave_tools._join import _ogg_page

    ident = b"\x01vorbis" + struct.pack("<IBIiii", 0, 1, 24000, 0, 0, 0) + b"\xb8\x01"
    vorbis = _ogg_page(0x02, 0, 5, 0, [ident]) + _ogg_page(0x04, 0, 5, 1, [b"x"])
    (tmp_path / "a.opus").write_bytes(vorbis)
    (tmp_path / "b.opus").write_bytes(vorbis)
    with pytest.raises(InvalidInputError) as info:
        join_files([tmp_path / "a.opus", tmp_path / "b.opus"], "opus", tmp_path / "o.opus",
                   pause_ms=300)  # fmt: skip
    assert info.value.field == "pause_ms"
    assert "Use pause_ms=0, or ask for wav, mp3 or pcm" in str(info.value)


# ---------------------------------------------------------------- FLAC, AAC and the extra


def test_flac_and_aac_without_the_audio_extra_name_it_and_the_formats_that_work() -> None:
    code = (
        "import sys; sys.modules['av'] = None\n"
        "from octave_tools._join import check_joinable\n"
        "from octave_tools.errors import InvalidInputError\n"
        "for fmt in ('flac', 'aac'):\n"
        "    try:\n"
        "        check_joinable(fmt)\n"
        "    except InvalidInputError as exc:\n"
        "        print(exc.field, exc)\n"
        "check_joinable('mp3')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines == [
        f"format Text this long is spoken in parts, and joining {fmt} parts into one file "
        "needs the audio extra: pip install 'octave-tools[audio]'. Without it, ask for one "
        "of wav, pcm, mp3, opus, or keep the text within one request."
        for fmt in ("flac", "aac")
    ]


def test_an_unknown_format_cannot_be_joined() -> None:
    with pytest.raises(InvalidInputError, match="'ogg' cannot be joined"):
        check_joinable("ogg")


def test_no_parts_and_a_negative_pause_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no parts"):
        join_files([], "wav", tmp_path / "o.wav")
    with pytest.raises(InvalidInputError, match="pause_ms must be 0 or more"):
        join_files(write_parts(tmp_path, "wav", [1]), "wav", tmp_path / "o.wav", pause_ms=-1)


def decoded_seconds(path: Path, fmt: str) -> float:
    import av

    with av.open(str(path), format={"opus": "ogg", "aac": "aac"}.get(fmt)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return float(samples / stream.codec_context.sample_rate)


@needs_av
@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "aac"])
@pytest.mark.parametrize("pause_ms", [0, 480])
def test_every_joined_format_decodes_to_the_sum_of_its_parts(
    tmp_path: Path, fmt: str, pause_ms: int
) -> None:
    sizes = [100, 50, 7]
    parts = write_parts(tmp_path, fmt, sizes)
    joined = join_files(parts, fmt, tmp_path / f"out.{fmt}", pause_ms=pause_ms)
    expected = sum(sizes) * SECONDS_PER_CHARACTER + 2 * pause_ms / 1000
    assert joined.duration_s == pytest.approx(expected, abs=0.03)  # AAC: whole 1,024 frames
    # ADTS cannot say that the encoder's first 1,024 samples are priming.
    priming = 1024 / 24000 if fmt == "aac" else 0.0
    assert decoded_seconds(joined.path, fmt) == pytest.approx(joined.duration_s + priming, abs=0.03)


@needs_av
def test_flac_parts_at_another_rate_are_resampled(tmp_path: Path) -> None:
    import av

    other = tmp_path / "b.flac"
    with av.open(str(other), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=48000)
        stream.layout = "stereo"
        frame = av.AudioFrame(format=stream.format.name, layout="stereo", samples=4800)
        frame.sample_rate = 48000
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    (tmp_path / "a.flac").write_bytes(make_audio("flac", 10))
    joined = join_files([tmp_path / "a.flac", other], "flac", tmp_path / "out.flac")
    assert decoded_seconds(joined.path, "flac") == pytest.approx(0.24 + 0.1, abs=0.005)


@needs_av
def test_a_part_that_is_not_flac_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.flac").write_bytes(make_audio("flac", 10))
    (tmp_path / "b.flac").write_bytes(b"not audio at all" * 10)
    with pytest.raises(UnexpectedResponseError, match="^Part 2's audio cannot be"):
        join_files([tmp_path / "a.flac", tmp_path / "b.flac"], "flac", tmp_path / "o.flac")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "pcm"])
def test_memory_does_not_grow_with_the_parts_length(tmp_path: Path, fmt: str) -> None:
    parts = write_parts(tmp_path, fmt, [8000, 8000, 8000])  # 9 MB of WAV
    tracemalloc.start()
    try:
        join_files(parts, fmt, tmp_path / f"out.{fmt}", pause_ms=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024


# ---------------------------------------------------------------- the fake's audio


@pytest.mark.parametrize(
    ("model", "extra", "fmt"),
    [
        ("openai/tts-1", {"response_format": "mp3"}, "mp3"),
        ("openai/tts-1", {"response_format": "opus"}, "opus"),
        ("openai/tts-1", {"response_format": "wav"}, "wav"),
        ("openai/tts-1", {"response_format": "pcm"}, "pcm"),
        ("openai/tts-1", {"response_format": "flac"}, "flac"),
        ("elevenlabs/eleven_multilingual_v2", {"output_format": "mp3_44100_128"}, "mp3"),
        ("hume/octave-2", {}, "wav"),
    ],
)
def test_the_fake_answers_joinable_audio_that_scales_with_the_text(
    fake_aimlapi: FakeAIMLAPI, tmp_path: Path, model: str, extra: dict[str, str], fmt: str
) -> None:
    parts = []
    for index, text in enumerate(["Hello there.", "A longer second sentence, to be sure."]):
        r = httpx.post(
            fake_aimlapi.base_url + "/tts",
            json={"model": model, "text": text, **extra},
            headers={"Authorization": "Bearer test-key"},
        )
        audio = r.content if r.status_code == 200 else httpx.get(r.json()["audio"]["url"]).content
        assert audio == make_audio(fmt, len(text)) or fmt == "opus"  # opus: a random serial
        parts.append(tmp_path / f"{index}.{fmt}")
        parts[-1].write_bytes(audio)
    joined = join_files(parts, fmt, tmp_path / f"out.{fmt}")
    assert joined.duration_s == pytest.approx((12 + 37) * SECONDS_PER_CHARACTER)


def test_the_fake_waits_its_latency_on_every_request_in_parallel() -> None:
    import concurrent.futures

    body = {"model": "hume/octave-2", "text": "Hi"}
    headers = {"Authorization": "Bearer test-key"}
    with FakeAIMLAPI(latency=0.2) as api:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(api.base_url + "/tts", json=body, headers=headers),
                         range(4))
            )  # fmt: skip
        elapsed = time.perf_counter() - started
        api.latency = 0.0
        started = time.perf_counter()
        httpx.post(api.base_url + "/tts", json=body, headers=headers)
        quick = time.perf_counter() - started
    assert [a.status_code for a in answers] == [201] * 4
    assert 0.2 <= elapsed < 0.75  # in parallel: one in turn would take 0.8 s
    assert quick < 0.2
