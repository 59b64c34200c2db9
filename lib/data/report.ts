/**
 * How `validate` (and `convert --check`) report bad records: plain
 * `FILE:LINE: field: message` lines, GitHub Actions annotations, or one JSON
 * document for tools.
 */
import type { ConvertResult, FileReport } from "./convert.ts";
import { formatProblem, printable } from "./convert.ts";
import { count } from "../plural.ts";

export type ReportFormat = "text" | "github" | "json";

/** GitHub workflow-command escaping (the message, then a property value). */
function ghData(s: string): string {
  return s.replace(/%/g, "%25").replace(/\r/g, "%0D").replace(/\n/g, "%0A");
}
function ghProperty(s: string): string {
  return ghData(s).replace(/:/g, "%3A").replace(/,/g, "%2C");
}

export interface JsonFileReport extends FileReport {
  bad: {
    line: number;
    index: number;
    structural?: boolean;
    problems: { field: string; message: string }[];
  }[];
}

/** Collects and prints a report as records come in; `text`/`github` print each bad record at once. */
export class Reporter {
  private files: JsonFileReport[] = [];
  private current: JsonFileReport["bad"] = [];
  constructor(readonly format: ReportFormat, private out: (line: string) => void = console.log) {}

  bad(file: string, r: ConvertResult): void {
    if (this.format === "json") {
      this.current.push({
        line: r.line,
        index: r.index,
        ...(r.structural ? { structural: true } : {}),
        problems: r.problems,
      });
      return;
    }
    for (const p of r.problems) {
      if (this.format === "text") this.out(formatProblem(file, r.line, p));
      else {
        const msg = printable(p.field ? `${p.field}: ${p.message}` : p.message);
        this.out(`::error file=${ghProperty(file)},line=${r.line}::${ghData(msg)}`);
      }
    }
  }

  /** A file that cannot be read at all: one problem, reported as a failed file. */
  unreadable(file: string, message: string): void {
    if (this.format === "json") {
      this.current.push({
        line: 0,
        index: -1,
        structural: true,
        problems: [{ field: "", message }],
      });
    } else if (this.format === "text") this.out(`${file}: ${message}`);
    else this.out(`::error file=${ghProperty(file)}::${ghData(message)}`);
    this.fileDone({ file, records: 0, badRecords: 0, problems: 1 });
  }

  fileDone(report: FileReport): void {
    this.files.push({ ...report, bad: this.current });
    this.current = [];
    if (this.format !== "json") this.out(summaryLine(report));
  }

  /** The final output (the whole document for json, a total line for several files). */
  finish(): void {
    const total = {
      files: this.files.length,
      records: this.files.reduce((a, f) => a + f.records, 0),
      badRecords: this.files.reduce((a, f) => a + f.badRecords, 0),
      problems: this.files.reduce((a, f) => a + f.problems, 0),
    };
    if (this.format === "json") {
      this.out(JSON.stringify({ ok: total.problems === 0, total, files: this.files }, null, 2));
    } else if (this.files.length > 1) {
      this.out(
        `total: ${count(total.files, "file")}, ${count(total.records, "record")}, ` +
          `${total.badRecords} bad, ${count(total.problems, "problem")}`,
      );
    }
  }
}

export function summaryLine(r: FileReport): string {
  const verdict = r.problems === 0 ? "ok" : "FAILED";
  return `${r.file}: ${count(r.records, "record")}, ${r.badRecords} bad, ${
    count(r.problems, "problem")
  } — ${verdict}`;
}
