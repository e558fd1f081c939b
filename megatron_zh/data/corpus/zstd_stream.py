"""Reading a zstd stream to its end, and knowing that it was the end.

zstandard's own `stream_reader` returns the partial data of a truncated file as if it were the
whole file: a `.jsonl.zst` cut short by a failed download would be preprocessed into a smaller
corpus with exit status 0. gzip, bz2 and lzma raise EOFError there; `ZstdReader` does the same,
by decompressing frame by frame and checking, when the compressed bytes run out, that the last
frame was complete. Concatenated frames (what `zstd` writes for appended inputs, and what
multi-threaded compressors emit) are read one after another.

Torch-free: the preprocessing driver imports it before it starts its workers.
"""

from __future__ import annotations

import io
from typing import IO, Any

_READ_BYTES = 1 << 20


class ZstdReader(io.RawIOBase):
    """The decompressed bytes of `raw` (a binary file object holding zstd frames); does not close `raw`."""

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard  # only when a .zst input is read

        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame: Any = self._decompressor.decompressobj()
        self._frame_started = False  # bytes of the current frame have been fed to it
        self._out = memoryview(b"")  # decompressed, not yet handed out
        self._source_done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._source_done:
            self._decompress_more()
        count = min(len(buffer), len(self._out))
        buffer[:count] = self._out[:count]
        self._out = self._out[count:]
        return count

    def _decompress_more(self) -> None:
        data = self._raw.read(_READ_BYTES)
        if not data:
            self._source_done = True
            if self._frame_started:
                raise EOFError("the zstd data ends inside a frame: the file is truncated")
            return
        pieces = []
        while data:
            pieces.append(self._frame.decompress(data))
            self._frame_started = True
            if not self._frame.eof:
                break
            data = self._frame.unused_data  # the start of the next frame, if any
            self._frame, self._frame_started = self._decompressor.decompressobj(), False
        self._out = memoryview(b"".join(pieces))
