"""Read TensorBoard event files back with the real `tensorboard` package.

    .venv-tools/bin/python tools/read_tensorboard.py EVENT_DIR [HEX ...]

Prints one JSON document: every scalar as TensorBoard's EventAccumulator
reads it (tag -> [{step, wall_time, value}], orphaned events of a restarted
run purged as TensorBoard does), every text summary (the text plugin's string
tensors), and, for each HEX byte string given, the masked CRC-32C that
tensorboard's own TFRecord code computes. tools/make_tensorboard_fixture.ts
records this as tests/fixtures/tensorboard/read_back.json.

Set up once: python3 -m venv .venv-tools && .venv-tools/bin/pip install tensorboard
"""

import json
import sys

import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c


def main() -> None:
    path, hexes = sys.argv[1], sys.argv[2:]
    acc = event_accumulator.EventAccumulator(
        path,
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0},
        purge_orphaned_data=True,
    )
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        tag: [{"step": e.step, "wall_time": e.wall_time, "value": e.value} for e in acc.Scalars(tag)]
        for tag in sorted(tags["scalars"])
    }
    texts = {}
    for tag in sorted(tags["tensors"]):
        events = acc.Tensors(tag)
        texts[tag] = [
            {"step": e.step, "text": [s.decode("utf-8") for s in e.tensor_proto.string_val]}
            for e in events
        ]
    out = {
        "tensorboard_version": tensorboard.__version__,
        "file_version": acc.file_version,
        "scalars": scalars,
        "texts": texts,
        "masked_crc32c": {h: masked_crc32c(bytes.fromhex(h)) for h in hexes},
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
