"""Reading a GGUF file we did not write: ``read_gguf`` checks its header against its size before trusting it.

The ``gguf`` package's reader believes the counts in the header: an array declared to hold 2**40 strings is
read string by string until the file ends, and a file cut short fails deep inside numpy (``cannot reshape
array ...``) without naming the file. Here an array (of any type) must fit in the bytes left after it, at the
smallest size its items can have, and so must every tensor's data; anything else is a ``ValueError`` that
names the file and says it is truncated or damaged.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np

VT = gguf.GGUFValueType
# the fewest bytes one item of each type takes in a GGUF array (a string: its 8-byte length; an array: its
# 4-byte type and 8-byte count)
SMALLEST_ITEM: dict[int, int] = {VT.STRING: 8, VT.ARRAY: 12, **{
    int(kind): np.dtype(dtype).itemsize for kind, dtype in gguf.GGUFReader.gguf_scalar_to_np.items()}}


class _CheckedReader(gguf.GGUFReader):
    """``gguf.GGUFReader`` that refuses an array longer than the bytes left in the file could hold."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type == VT.ARRAY:
            item_type, count = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
            left = len(self.data) - orig_offs - 12
            if count * SMALLEST_ITEM.get(item_type, 1) > left:
                raise ValueError(f"an array at byte {orig_offs} declares {count} items, more than the {left} bytes "
                                 "left in the file can hold")
        return super()._get_field_parts(orig_offs, raw_type)


def read_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """The GGUF file at ``path``, its header checked against its size (module docstring)."""
    path = Path(path)
    try:
        reader = _CheckedReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error) as err:
        raise ValueError(f"{path} is truncated or damaged, not a GGUF file that can be read ({err}): download or "
                         "convert it again") from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > len(reader.data):
        raise ValueError(f"{path} is truncated: its tensors need {end} bytes but the file has {len(reader.data)}; "
                         "download or convert it again")
    return reader
