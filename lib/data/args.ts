/** Moved to lib/args.ts; re-exported while stages/report.ts still imports it from here. */
export { parseFlags } from "../args.ts";
