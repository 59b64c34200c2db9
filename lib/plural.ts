/**
 * Counts in messages: "1 record", "2 records", "0 problems". One helper so no
 * message says "1 records".
 */

/** `n` and the noun, singular for exactly 1 (`plural` defaults to noun + "s"). */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}
