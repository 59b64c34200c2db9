/**
 * Python's notion of whitespace (`str.isspace`, used by `str.split()`,
 * `str.strip()`), which differs from JavaScript's `\s`: Python counts the
 * information separators U+001C..U+001F and U+0085 and does not count U+FEFF.
 * The reference metrics run on Python strings, so their splitting must too.
 */
const PY_WS = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005" +
  "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";

const WS_SET = new Set(PY_WS);

export function isPySpace(ch: string): boolean {
  return WS_SET.has(ch);
}

const WS_CLASS = `[${PY_WS.replace(/[\\\]^-]/g, "\\$&")}]`;
const WS_RUN = new RegExp(`${WS_CLASS}+`, "u");
const WS_LEAD = new RegExp(`^${WS_CLASS}+`, "u");
const WS_TRAIL = new RegExp(`${WS_CLASS}+$`, "u");

/** `s.split()`: split on runs of whitespace, dropping empty pieces. */
export function pySplit(s: string): string[] {
  return s.split(WS_RUN).filter((w) => w.length > 0);
}

/** `s.strip()`. */
export function pyStrip(s: string): string {
  return s.replace(WS_LEAD, "").replace(WS_TRAIL, "");
}

/** `s.lstrip()`. */
export function pyLstrip(s: string): string {
  return s.replace(WS_LEAD, "");
}

/** `s.rstrip()`. */
export function pyRstrip(s: string): string {
  return s.replace(WS_TRAIL, "");
}
