/**
 * A small line chart as a standalone SVG string (no dependencies), for the
 * pipeline report's loss curves: one `<path>` per series with one point per
 * value, linear axes with rounded ticks, and a legend. Markdown viewers that
 * render inline HTML show it in place; it is also valid on its own as a file.
 */

export interface Series {
  name: string;
  /** [x, y] pairs; points with a non-finite coordinate are left out */
  points: [number, number][];
  color?: string;
  /** draw a marker at each point (for sparse series such as eval loss) */
  markers?: boolean;
}

export interface ChartOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  width?: number;
  height?: number;
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];

export function escapeXml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!,
  );
}

/** Round tick positions covering [lo, hi]: steps of 1, 2 or 5 × 10^k, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) {
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return niceTicks(lo - d, lo + d, count);
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  if (out[out.length - 1] < hi) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  return Number(v.toFixed(2)).toString();
}

function label(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
}

/** The chart; empty series are listed in the legend but draw nothing. */
export function lineChart(series: Series[], opts: ChartOptions = {}): string {
  const W = opts.width ?? 640;
  const H = opts.height ?? 320;
  const m = { left: 56, right: 16, top: opts.title ? 28 : 12, bottom: 40 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const clean = series.map((s) => ({
    ...s,
    points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)),
  }));
  const xs = clean.flatMap((s) => s.points.map((p) => p[0]));
  const ys = clean.flatMap((s) => s.points.map((p) => p[1]));
  const xTicks = xs.length ? niceTicks(Math.min(...xs), Math.max(...xs)) : [0, 1];
  const yTicks = ys.length ? niceTicks(Math.min(0, ...ys), Math.max(...ys)) : [0, 1];
  const [x0, x1] = [xTicks[0], xTicks[xTicks.length - 1]];
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const sx = (x: number) => m.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.top + ph - ((y - y0) / (y1 - y0)) * ph;

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
  );
  parts.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`);
  if (opts.title) {
    parts.push(
      `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${
        escapeXml(opts.title)
      }</text>`,
    );
  }
  for (const t of yTicks) {
    const y = fmt(sy(t));
    parts.push(
      `<line x1="${m.left}" y1="${y}" x2="${m.left + pw}" y2="${y}" stroke="#e5e5e5"/>`,
      `<text x="${m.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${
        escapeXml(label(t))
      }</text>`,
    );
  }
  for (const t of xTicks) {
    const x = fmt(sx(t));
    parts.push(
      `<line x1="${x}" y1="${m.top + ph}" x2="${x}" y2="${m.top + ph + 4}" stroke="#333"/>`,
      `<text x="${x}" y="${m.top + ph + 16}" text-anchor="middle">${escapeXml(label(t))}</text>`,
    );
  }
  parts.push(
    `<path d="M${m.left} ${m.top}V${m.top + ph}H${m.left + pw}" fill="none" stroke="#333"/>`,
  );
  if (opts.xLabel) {
    parts.push(
      `<text x="${m.left + pw / 2}" y="${H - 6}" text-anchor="middle">${
        escapeXml(opts.xLabel)
      }</text>`,
    );
  }
  if (opts.yLabel) {
    parts.push(
      `<text x="14" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${
        m.top + ph / 2
      })">${escapeXml(opts.yLabel)}</text>`,
    );
  }
  clean.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    if (s.points.length > 0) {
      const d = s.points.map(([x, y], j) => `${j ? "L" : "M"}${fmt(sx(x))} ${fmt(sy(y))}`).join(
        "",
      );
      parts.push(
        `<path class="series" data-name="${
          escapeXml(s.name)
        }" d="${d}" fill="none" stroke="${color}" stroke-width="1.5"/>`,
      );
      if (s.markers) {
        for (const [x, y] of s.points) {
          parts.push(`<circle cx="${fmt(sx(x))}" cy="${fmt(sy(y))}" r="3" fill="${color}"/>`);
        }
      }
    }
    const ly = m.top + 8 + i * 16;
    const lx = m.left + pw - 130;
    parts.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 18}" y2="${ly}" stroke="${color}" stroke-width="2"/>`,
      `<text x="${lx + 24}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n");
}
