"""One decode of the publisher, one encode per codec, the same packets to every viewer.

aiortc runs an encoder in every RTCRtpSender that is fed decoded frames (its MediaRelay pattern: one
full encode per viewer). Here a stream decodes its publisher once (aiortc's receiver), encodes each
frame once per codec its viewers take, packetizes it once, and writes the same payloads to every
viewer's RTP (live/media/rtpout.py). A viewer starts, and restarts after its connection dropped out,
at a keyframe; the GOP is short (1 s) so that is never far.

    publisher RTP -> aiortc decoder thread -> drain task -> Relay._frames (3 at most)
        -> encode task -> VideoEncoder (one thread per stream) -> Packetizer -> each viewer's RtpOut
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum

import av
from aiortc import clock
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType

from live.media.config import MediaConfig
from live.media.rtpout import Packed, Packetizer, RtpOut

_RTP_WRAP = 1 << 32
_PENDING_FRAMES = 3  # 100 ms at 30 fps
_FAN_OUT_SLICE = 50  # viewers sent a frame per loop turn (~3 ms of CPU)


class FrameClock:
    """Encoder timestamps at 1/fps from the publisher's frame times (RTP timestamps, which wrap at
    2^32). A frame landing in a slot already used (a publisher sending faster than fps) is skipped,
    so the encoder never sees more than fps frames a second and timestamps stay truthful."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self._last_slot = -1
        self._prev: int | None = None
        self._ticks = 0  # source ticks since the first frame
        self._origin: float | None = None

    def slot(self, pts: int | None, time_base: fractions.Fraction | None, now: float) -> int | None:
        if pts is None or time_base is None:
            if self._origin is None:
                self._origin = now
            slot = math.floor((now - self._origin) * self.fps)
        else:
            if self._prev is not None:
                delta = (pts - self._prev) % _RTP_WRAP
                if delta < _RTP_WRAP // 2:  # else a late frame: keep the clock where it is
                    self._ticks += delta
            self._prev = pts
            slot = math.floor(self._ticks * time_base * self.fps)  # exact: Fractions
        if slot <= self._last_slot:
            return None
        self._last_slot = slot
        return slot


class VideoEncoder:
    """The one encoder of a stream for one codec. Runs on the stream's encode thread only."""

    def __init__(self, codec: str, config: MediaConfig) -> None:
        self.codec = codec
        self.config = config
        self.time_base = fractions.Fraction(1, config.fps)
        self._ctx: av.video.codeccontext.VideoCodecContext | None = None

    def _open(self, width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
        c = self.config
        if self.codec == "H264":
            ctx = av.CodecContext.create("libx264", "w")
            # Baseline 3.1 (720p30), no B-frames, no lookahead: what every WebRTC H.264 decoder takes.
            ctx.options = {"preset": c.x264_preset, "tune": "zerolatency", "profile": "baseline",
                           "level": "3.1", "forced-idr": "1",
                           "maxrate": str(c.bitrate), "bufsize": str(c.bitrate)}
        else:
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                           "error-resilient": "1", "maxrate": str(c.bitrate), "bufsize": str(c.bitrate)}
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.framerate = fractions.Fraction(c.fps, 1)
        ctx.bit_rate = c.bitrate
        ctx.gop_size = c.gop
        ctx.open()
        return ctx

    def encode(self, frame: av.VideoFrame, pts: int, keyframe: bool) -> list[av.Packet]:
        ctx = self._ctx
        if ctx is None or (ctx.width, ctx.height) != (frame.width, frame.height):
            ctx = self._ctx = self._open(frame.width, frame.height)  # a new size starts with a keyframe
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        packets = ctx.encode(frame)
        for p in packets:
            p.time_base = self.time_base
        return packets

    def close(self) -> None:
        self._ctx = None  # PyAV frees the codec (and x264's threads) with the context


class AudioEncoder:
    """The one Opus encoder of a stream's audio (cheap: it runs on the event loop)."""

    RATE = 48000

    def __init__(self, bitrate: int = 64000) -> None:
        self.time_base = fractions.Fraction(1, self.RATE)
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.bit_rate = bitrate
        self._ctx.format = "s16"
        self._ctx.layout = "stereo"
        self._ctx.sample_rate = self.RATE
        self._ctx.time_base = self.time_base
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=self.RATE, frame_size=960)
        self._pts = 0

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        packets: list[av.Packet] = []
        for f in self._resampler.resample(frame):
            f.pts, f.time_base = self._pts, self.time_base
            self._pts += f.samples
            packets += self._ctx.encode(f)
        for p in packets:
            p.time_base = self.time_base
        return packets


class Pushed(IntEnum):
    SENT = 0
    WAITING = 1  # the viewer waits for a keyframe


class ViewerTrack(MediaStreamTrack):
    """A viewer's video. The stream's fan-out sends each packetized frame through the viewer's
    `RtpOut` itself, starting at a keyframe; aiortc's sender never reads this track."""

    kind = "video"

    def __init__(self, codec: str) -> None:
        super().__init__()
        self.codec = codec
        self.out: RtpOut | None = None
        self._waiting_key = True
        self._ended = asyncio.Event()
        self.sent = 0

    def deliver(self, frame: Packed, ntp: int) -> Pushed:
        if self._waiting_key and not frame.keyframe:
            return Pushed.WAITING
        if self.out is None or not self.out.send(frame, ntp):
            self._waiting_key = True  # not connected (yet, or any more): start again at a keyframe
            return Pushed.WAITING
        self._waiting_key = False
        self.sent += 1
        return Pushed.SENT

    def finish(self) -> None:
        """End the track and stop its sending."""
        if self.out is not None:
            self.out.stop()
        self._ended.set()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        await self._ended.wait()
        self.stop()
        raise MediaStreamError


class AudioViewerTrack(MediaStreamTrack):
    """A viewer's audio: the stream's Opus packets (each one decodable alone) from a bounded queue,
    read by aiortc's sender, which only packetizes them."""

    kind = "audio"

    def __init__(self, max_packets: int) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(max_packets)
        self.sent = 0
        self.dropped = 0

    def push(self, packet: av.Packet) -> Pushed:
        if self._queue.full():
            # Over a second behind (a slow link, or a server out of CPU): drop the backlog rather than
            # play stale sound.
            self.dropped += self._empty()
        self._queue.put_nowait(packet)
        self.sent += 1
        return Pushed.SENT

    def _empty(self) -> int:
        n = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            n += 1
        return n

    def finish(self) -> None:
        """End the track: the sender's next recv() ends its RTP loop."""
        self._empty()
        self._queue.put_nowait(None)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet


@dataclass
class RelayStats:
    frames_in: int = 0
    frames_encoded: int = 0
    frames_skipped: int = 0  # over fps, or no viewer to encode for
    frames_dropped: int = 0  # pushed out of the pending frames while the encoder was busy
    packets_sent: int = 0
    encode_seconds: float = 0.0


class Relay:
    """A stream's video path from its publisher to its viewers, in one process."""

    def __init__(self, stream_id: str, config: MediaConfig,
                 on_encode: Callable[[str, float, int, int], None] | None = None) -> None:
        self.stream_id = stream_id
        self.config = config
        self.stats = RelayStats()
        self._viewers: dict[str, set[ViewerTrack]] = {}  # video codec -> its viewers' tracks
        self._listeners: set[AudioViewerTrack] = set()
        self._audio: AudioEncoder | None = None
        self._encoders: dict[str, VideoEncoder] = {}
        self._packetizers: dict[str, Packetizer] = {}
        self._clock = FrameClock(config.fps)
        # Decoded frames waiting for the encoder: a few, so that frames the network or the decoder
        # bunched together are all encoded; when full, the oldest is dropped (the encoder cannot keep up).
        self._frames: deque[av.VideoFrame] = deque(maxlen=_PENDING_FRAMES)
        self._ready = asyncio.Event()
        self._want_key = False
        self._last_forced = float("-inf")
        self._on_encode = on_encode
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"media-encode-{stream_id}")
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._run(), name=f"media-relay-{stream_id}")

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    def add_viewer(self, track: ViewerTrack | AudioViewerTrack) -> None:
        if isinstance(track, AudioViewerTrack):
            self._listeners.add(track)
            return
        self._viewers.setdefault(track.codec, set()).add(track)
        self._want_key = True  # a keyframe soon rather than at the end of the GOP (rate-limited)

    def request_keyframe(self) -> None:
        """A viewer lost a picture (PLI/FIR): a keyframe soon (rate-limited)."""
        self._want_key = True

    def remove_viewer(self, track: ViewerTrack | AudioViewerTrack) -> None:
        if isinstance(track, AudioViewerTrack):
            self._listeners.discard(track)
            track.finish()
            return
        tracks = self._viewers.get(track.codec)
        if tracks is not None:
            tracks.discard(track)
            if not tracks:
                del self._viewers[track.codec]
        track.finish()

    def feed(self, frame: av.VideoFrame) -> None:
        """A decoded frame of the publisher (called by its drain task)."""
        self.stats.frames_in += 1
        if len(self._frames) == _PENDING_FRAMES:
            self.stats.frames_dropped += 1  # the oldest waiting frame goes
        self._frames.append(frame)
        self._ready.set()

    def feed_audio(self, frame: av.AudioFrame) -> None:
        """A decoded audio frame of the publisher: encoded once, for listeners only."""
        if not self._listeners:
            self._audio = None  # the next listener starts a fresh encoder
            return
        if self._audio is None:
            self._audio = AudioEncoder()
        for packet in self._audio.encode(frame):
            for track in self._listeners:
                track.push(packet)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._frames:
                self._ready.clear()
                await self._ready.wait()
                continue
            frame = self._frames.popleft()
            for codec in [c for c in self._encoders if c not in self._viewers]:
                self._encoders.pop(codec).close()  # nobody left on that codec: free its encoder
                self._packetizers.pop(codec, None)
            if not self._viewers:
                self.stats.frames_skipped += 1
                continue
            pts = self._clock.slot(frame.pts, frame.time_base, loop.time())
            if pts is None:
                self.stats.frames_skipped += 1
                continue
            now = loop.time()
            keyframe = self._want_key and now - self._last_forced >= 1.0
            if keyframe:
                self._want_key, self._last_forced = False, now
            for codec in list(self._viewers):
                encoder = self._encoders.get(codec)
                if encoder is None:
                    encoder = self._encoders[codec] = VideoEncoder(codec, self.config)
                start = time.perf_counter()
                packets = await loop.run_in_executor(self._executor, encoder.encode, frame, pts, keyframe)
                spent = time.perf_counter() - start
                self.stats.frames_encoded += 1
                self.stats.encode_seconds += spent
                sent = await self._fan_out(codec, packets)
                if self._on_encode is not None:
                    self._on_encode(codec, spent, len(packets), sent)

    async def _fan_out(self, codec: str, packets: list[av.Packet]) -> int:
        """Packetize each packet once and send it to every viewer of the codec. The loop is let go
        every `_FAN_OUT_SLICE` viewers, so requests on this process wait a few ms at most behind a big
        audience's frame."""
        sent = 0
        packetizer = self._packetizers.get(codec)
        if packetizer is None:
            packetizer = self._packetizers[codec] = Packetizer(codec)
        ntp = clock.current_ntp_time()  # the frame's abs-send-time and sender report, for every viewer
        for packet in packets:
            frame = packetizer.pack(packet)
            tracks = list(self._viewers.get(codec, ()))  # a viewer leaving meanwhile is skipped (finished)
            for start in range(0, len(tracks), _FAN_OUT_SLICE):
                if start:
                    await asyncio.sleep(0)
                for track in tracks[start:start + _FAN_OUT_SLICE]:
                    if track.deliver(frame, ntp) is Pushed.SENT:
                        sent += 1
        self.stats.packets_sent += sent
        return sent

    async def close(self) -> None:
        """Stop encoding, end every viewer's track, and join the encode thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        everyone: list[ViewerTrack | AudioViewerTrack] = [t for tracks in self._viewers.values() for t in tracks]
        for track in [*everyone, *self._listeners]:
            track.finish()
        self._viewers.clear()
        self._listeners.clear()
        # The encoders are closed on their own thread (after an encode still running there), then that
        # idle thread is joined, which takes microseconds.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_encoders)
        self._executor.shutdown(wait=True)

    def _close_encoders(self) -> None:
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()
