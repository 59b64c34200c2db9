/** One problem of a record: what the checks (./schema.ts, ./limits.ts) report. */
export interface Problem {
  /** Path of the offending field (`conversations[2].content`); "" for the record as a whole. */
  field: string;
  message: string;
}
