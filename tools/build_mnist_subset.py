"""Build the MNIST subset shipped with the package from the four official MNIST files.

    python tools/build_mnist_subset.py [--data-dir DIR] [--out learned_torch_optim/meta/bundled/mnist-subset]

Reads the official files (DIR/mnist/*-ubyte.gz, checked by sha256; see learned_torch_optim/meta/data.py for where
DIR is found, and the download when it is not), keeps the first 5,000 training and the first 1,000 test images
with their labels, unchanged, and writes them as IDX files in the official format, gzip-compressed at level 9
without a name or time stamp.  Prints each written file's sha256 and whether it is the one the package expects
(``DATASETS["mnist-subset"]``).  The decompressed bytes are exact by construction; the compressed bytes are those
of the zlib this Python uses (the pinned sums were made with zlib 1.2.13); another deflate implementation, such as
zlib-ng, may compress them differently.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

from learned_torch_optim.meta.data import DATASETS, dataset_file, dataset_files

BUNDLED = "learned_torch_optim/meta/bundled/mnist-subset"
KEPT = {"train": 5000, "test": 1000}
"""How many records to keep from the start of each official split."""
IMAGES_LAYOUT = (16, 28 * 28)
LABELS_LAYOUT = (8, 1)
"""Bytes of an IDX file's header and of one record, for the images and for the labels."""


def first_records(raw: bytes, header_bytes: int, record_bytes: int, count: int) -> bytes:
    """The IDX file ``raw`` cut to its first ``count`` records: the header with its first dimension set to
    ``count``, then those records."""
    available = int.from_bytes(raw[4:8], "big")
    if available < count:
        raise ValueError(f"the file holds {available} records, fewer than {count}")
    records = raw[header_bytes : header_bytes + count * record_bytes]
    return raw[:4] + count.to_bytes(4, "big") + raw[8:header_bytes] + records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="the folder holding mnist/ with the official files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / BUNDLED)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    expected = DATASETS["mnist-subset"]["sha256"]
    for split, count in KEPT.items():
        images_name, labels_name = dataset_files("mnist", split)
        for name, (header_bytes, record_bytes) in ((images_name, IMAGES_LAYOUT), (labels_name, LABELS_LAYOUT)):
            raw = gzip.decompress(dataset_file("mnist", name, args.data_dir).read_bytes())
            subset = first_records(raw, header_bytes, record_bytes, count)
            payload = gzip.compress(subset, compresslevel=9, mtime=0)
            (args.out / name).write_bytes(payload)
            digest = hashlib.sha256(payload).hexdigest()
            verdict = "as expected" if expected.get(name) == digest else f"EXPECTED {expected.get(name)}"
            print(f"{digest}  {name}  ({len(payload):,} bytes; {count:,} records; {verdict})")
            print(f"  decompressed: sha256 {hashlib.sha256(subset).hexdigest()}, {len(subset):,} bytes")


if __name__ == "__main__":
    main()
