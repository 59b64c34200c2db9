/**
 * TFRecord framing, the container of TensorBoard event files: each record is
 *
 *   uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes |
 *   length bytes of data | uint32 masked CRC-32C of the data
 *
 * (tensorflow/core/lib/io/record_writer.cc). `readRecords` is the inverse,
 * checking both CRCs, for tests and tools.
 */
import { maskedCrc32c } from "./crc32c.ts";

/** One record, framed. */
export function frameRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/** The records of a TFRecord file; a bad length or data CRC, or a cut record, throws. */
export function readRecords(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Uint8Array[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    if (pos + 12 > bytes.length) throw new Error(`record at byte ${pos}: cut short`);
    const len = Number(view.getBigUint64(pos, true));
    if (view.getUint32(pos + 8, true) !== maskedCrc32c(bytes.subarray(pos, pos + 8))) {
      throw new Error(`record at byte ${pos}: length CRC mismatch`);
    }
    const end = pos + 12 + len;
    if (end + 4 > bytes.length) throw new Error(`record at byte ${pos}: cut short`);
    const data = bytes.subarray(pos + 12, end);
    if (view.getUint32(end, true) !== maskedCrc32c(data)) {
      throw new Error(`record at byte ${pos}: data CRC mismatch`);
    }
    out.push(data);
    pos = end + 4;
  }
  return out;
}
